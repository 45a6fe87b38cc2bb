/*
 * collector._query: a beacon's query string -> {key: value}, in one C call.
 *
 * The pixel endpoint's Python parser (collector.validate.parse_pairs) is
 * already a handful of C string methods per pair, and still ~4.5 µs of the
 * collector's per-request CPU on a pageview beacon. This does the same in one
 * pass over the bytes.
 *
 * It takes only what it can decode exactly as parse_pairs does: a query of
 * ASCII bytes whose every '%' starts a well-formed escape (what browsers and
 * the tag send). For such a query the two agree pair for pair: '&' separates
 * pairs (empty ones skipped), the first '=' splits key from value (no '=':
 * empty value), '+' is a space, %XX a byte, the bytes are read as UTF-8 with
 * invalid sequences replaced, and a repeated key keeps its last value. For
 * anything else (a raw non-ASCII byte, '%zz', a lone '%') it returns None and
 * the caller uses parse_pairs, which owns those cases.
 *
 * fields() goes one step further for a stream's pixel: the same pairs go
 * straight into the stream's field slots (no dict, no pops), and the one check
 * most fields have -- a non-empty string within max_length -- is made here.
 * What it cannot settle (a field with other rules, an empty or over-long value,
 * a required field that is absent) it lists for the Python checks, in field
 * order, so the first failure is the one StreamValidator.values would raise.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static int hexval(unsigned char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* One key or value: '+' -> ' ', %XX -> byte, then UTF-8 with replacement. */
static PyObject *decode_part(const unsigned char *s, Py_ssize_t n, char *scratch) {
    Py_ssize_t i = 0, o = 0;
    int plain = 1;
    for (i = 0; i < n; i++)
        if (s[i] == '%' || s[i] == '+') {
            plain = 0;
            break;
        }
    if (plain)
        return PyUnicode_DecodeASCII((const char *)s, n, NULL);
    for (i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '+') {
            scratch[o++] = ' ';
        } else if (c == '%') {
            /* Well-formed: checked for the whole query before. */
            scratch[o++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else {
            scratch[o++] = (char)c;
        }
    }
    return PyUnicode_DecodeUTF8(scratch, o, "replace");
}

/* ASCII only, and every '%' starts a well-formed escape. */
static int well_formed(const unsigned char *s, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] >= 0x80)
            return 0;
        if (s[i] == '%') {
            if (i + 2 >= n || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0)
                return 0;
            i += 2;
        }
    }
    return 1;
}

/* Calls take(ctx, key, value) for each pair of a well-formed query, in order: '&' separates pairs
 * (empty ones skipped), the first '=' splits key from value (no '=': empty value). take returns -1
 * with an exception set to stop; so does this. */
typedef int (*take_pair)(void *ctx, PyObject *key, PyObject *value);

static int each_pair(const unsigned char *s, Py_ssize_t n, take_pair take, void *ctx) {
    char small[512];
    char *scratch = n <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)n);
    if (!scratch) {
        PyErr_NoMemory();
        return -1;
    }
    int rc = 0;
    Py_ssize_t start = 0;
    while (rc == 0 && start <= n) {
        Py_ssize_t end = start;
        while (end < n && s[end] != '&')
            end++;
        if (end > start) {
            Py_ssize_t eq = start;
            while (eq < end && s[eq] != '=')
                eq++;
            PyObject *key = decode_part(s + start, eq - start, scratch);
            PyObject *value = key ? decode_part(s + eq + (eq < end), end - eq - (eq < end), scratch) : NULL;
            rc = !key || !value ? -1 : take(ctx, key, value);
            Py_XDECREF(key);
            Py_XDECREF(value);
        }
        start = end + 1;
    }
    if (scratch != small)
        PyMem_Free(scratch);
    return rc;
}

static int into_dict(void *ctx, PyObject *key, PyObject *value) {
    return PyDict_SetItem((PyObject *)ctx, key, value);
}

static PyObject *parse(PyObject *self, PyObject *arg) {
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "parse() takes bytes");
        return NULL;
    }
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
    if (!well_formed(s, n))
        Py_RETURN_NONE;
    PyObject *out = PyDict_New();
    if (out && each_pair(s, n, into_dict, out) < 0)
        Py_CLEAR(out);
    return out;
}

/* fields(): the slots being filled, and the unknown keys' dict, made on first use. */
typedef struct {
    PyObject *index, *out, *rest;
    Py_ssize_t nf;
} slots;

/* A field's slot (the last of repeated keys wins, as in a dict), or the unknown keys' dict. */
static int into_slot(void *ctx, PyObject *key, PyObject *value) {
    slots *f = ctx;
    PyObject *pos = PyDict_GetItemWithError(f->index, key);
    if (pos == NULL) {
        if (PyErr_Occurred())
            return -1;
        if (f->rest == NULL && (f->rest = PyDict_New()) == NULL)
            return -1;
        return PyDict_SetItem(f->rest, key, value);
    }
    Py_ssize_t i = PyLong_AsSsize_t(pos);
    if (i < 0 || i >= f->nf) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "fields(): an index position is out of range");
        return -1;
    }
    PyObject *old = PyList_GET_ITEM(f->out, i);
    Py_INCREF(value);
    PyList_SET_ITEM(f->out, i, value);
    Py_DECREF(old);
    return 0;
}

static PyObject *fields(PyObject *self, PyObject *args) {
    PyObject *raw, *index, *plain, *required;
    if (!PyArg_ParseTuple(args, "SO!O!O!:fields", &raw, &PyDict_Type, &index, &PyTuple_Type, &plain, &PyTuple_Type,
                          &required))
        return NULL;
    Py_ssize_t nf = PyTuple_GET_SIZE(plain);
    if (PyTuple_GET_SIZE(required) != nf) {
        PyErr_SetString(PyExc_ValueError, "fields(): plain and required differ in length");
        return NULL;
    }
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    if (!well_formed(s, n))
        Py_RETURN_NONE;
    slots f = {index, PyList_New(nf), NULL, nf};
    if (!f.out)
        return NULL;
    for (Py_ssize_t i = 0; i < nf; i++) {
        Py_INCREF(Py_None);
        PyList_SET_ITEM(f.out, i, Py_None);
    }
    PyObject *todo = NULL;
    int failed = each_pair(s, n, into_slot, &f) < 0 || (todo = PyList_New(0)) == NULL;
    /* What the Python checks must see: in field order, every slot this did not settle. */
    for (Py_ssize_t i = 0; !failed && i < nf; i++) {
        PyObject *v = PyList_GET_ITEM(f.out, i);
        Py_ssize_t max = PyLong_AsSsize_t(PyTuple_GET_ITEM(plain, i));
        int req = PyObject_IsTrue(PyTuple_GET_ITEM(required, i));
        if ((max == -1 && PyErr_Occurred()) || req < 0) {
            failed = 1;
            break;
        }
        int settled;
        if (v == Py_None) {
            settled = !req;
        } else {
            Py_ssize_t len = PyUnicode_GET_LENGTH(v);
            settled = max > 0 && len > 0 && len <= max;
        }
        if (!settled) {
            PyObject *at = PyLong_FromSsize_t(i);
            if (!at || PyList_Append(todo, at) < 0)
                failed = 1;
            Py_XDECREF(at);
        }
    }
    if (failed) {
        Py_DECREF(f.out);
        Py_XDECREF(f.rest);
        Py_XDECREF(todo);
        return NULL;
    }
    if (f.rest == NULL) {
        Py_INCREF(Py_None);
        f.rest = Py_None;
    }
    return Py_BuildValue("(NNN)", f.out, todo, f.rest);
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_O, "parse(query: bytes) -> dict[str, str] | None: a beacon query string, or None."},
    {"fields", fields, METH_VARARGS,
     "fields(query, index, plain, required) -> (values, todo, unknown | None) | None: a query split into a "
     "stream's field slots."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "collector._query", NULL, -1, methods};

PyMODINIT_FUNC PyInit__query(void) { return PyModule_Create(&module); }
