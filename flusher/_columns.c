/*
 * flusher._columns: collector frames (msgpack [columns, rows]) straight into
 * Arrow column buffers, without a Python object per value.
 *
 * The flusher's Python path decodes every value into a Python object (msgspec),
 * transposes the rows and has pyarrow copy each object again; all of it holds
 * the GIL, which the DuckDB insert of the previous batch needs at every step
 * of its statement. This decoder parses the msgpack bytes with the GIL
 * released and writes the Arrow buffers directly (validity bitmap, int32
 * offsets and UTF-8 data for strings, int64 / float64 / bit-packed values).
 *
 * It is deliberately strict: the first value that is not exactly what the
 * column's kind expects (a string where an int belongs, an extension type, a
 * row of another width, invalid UTF-8, a frame with other columns) makes it
 * return None, and the caller decodes the batch on the Python path, which has
 * the per-row refusals and dead letters. It never guesses.
 *
 * decode(payloads: list[bytes], names: tuple[bytes, ...], kinds: bytes)
 *   -> None | (rows, [(null_count, validity | None, offsets | None, data), ...])
 *
 * kinds, one byte per column: 'e' event id (bin 16 -> 32 lowercase hex
 * characters), 's' string (str or nil), 'i' int64 (int or nil), 'f' float64
 * (float, int or nil), 'b' bool (bool or nil), 'x' skipped (any value).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Nesting a skipped value may have; deeper input is refused, never recursed into. */
#define MAX_DEPTH 32

typedef struct {
    unsigned char *p;
    size_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t extra) {
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) {
        if (cap > SIZE_MAX / 2)
            return -1;
        cap *= 2;
    }
    unsigned char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

typedef struct {
    char kind;
    buf_t validity; /* one bit per row, 1 = valid */
    buf_t offsets;  /* int32, rows + 1 (strings only) */
    buf_t data;
    int64_t nulls;
} col_t;

typedef struct {
    const unsigned char *p, *end;
} rd_t;

static int rd_u8(rd_t *r, unsigned char *out) {
    if (r->p >= r->end)
        return -1;
    *out = *r->p++;
    return 0;
}

static int rd_be(rd_t *r, int n, uint64_t *out) {
    if (r->end - r->p < n)
        return -1;
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | r->p[i];
    r->p += n;
    *out = v;
    return 0;
}

/* The length of an array header at r (fixarray, array16, array32). */
static int rd_array(rd_t *r, uint64_t *n) {
    unsigned char t;
    if (rd_u8(r, &t))
        return -1;
    if ((t & 0xf0) == 0x90) {
        *n = t & 0x0f;
        return 0;
    }
    if (t == 0xdc)
        return rd_be(r, 2, n);
    if (t == 0xdd)
        return rd_be(r, 4, n);
    return -1;
}

/* A str header: its length; -1 if the next value is not a str. */
static int rd_str(rd_t *r, unsigned char t, uint64_t *n) {
    if ((t & 0xe0) == 0xa0) {
        *n = t & 0x1f;
        return 0;
    }
    if (t == 0xd9)
        return rd_be(r, 1, n);
    if (t == 0xda)
        return rd_be(r, 2, n);
    if (t == 0xdb)
        return rd_be(r, 4, n);
    return -1;
}

static int utf8_ok(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            if (i + 1 >= n || (s[i + 1] & 0xc0) != 0x80)
                return 0;
            i += 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            if (i + 2 >= n || (s[i + 1] & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80)
                return 0;
            if (c == 0xe0 && s[i + 1] < 0xa0) /* overlong */
                return 0;
            if (c == 0xed && s[i + 1] >= 0xa0) /* surrogate */
                return 0;
            i += 3;
        } else if (c >= 0xf0 && c <= 0xf4) {
            if (i + 3 >= n || (s[i + 1] & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80 || (s[i + 3] & 0xc0) != 0x80)
                return 0;
            if (c == 0xf0 && s[i + 1] < 0x90) /* overlong */
                return 0;
            if (c == 0xf4 && s[i + 1] >= 0x90) /* past U+10FFFF */
                return 0;
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* Step over one value of any type. */
static int skip_value(rd_t *r, int depth) {
    unsigned char t;
    uint64_t n;
    if (depth > MAX_DEPTH || rd_u8(r, &t))
        return -1;
    if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3)
        return 0;
    if ((t & 0xf0) == 0x80 || t == 0xde || t == 0xdf) { /* map */
        if ((t & 0xf0) == 0x80)
            n = t & 0x0f;
        else if (rd_be(r, t == 0xde ? 2 : 4, &n))
            return -1;
        for (uint64_t i = 0; i < 2 * n; i++)
            if (skip_value(r, depth + 1))
                return -1;
        return 0;
    }
    if ((t & 0xf0) == 0x90 || t == 0xdc || t == 0xdd) {
        r->p--;
        if (rd_array(r, &n))
            return -1;
        for (uint64_t i = 0; i < n; i++)
            if (skip_value(r, depth + 1))
                return -1;
        return 0;
    }
    if (rd_str(r, t, &n) == 0 || ((t == 0xc4 || t == 0xc5 || t == 0xc6) && !rd_be(r, 1 << (t - 0xc4), &n))) {
        if ((uint64_t)(r->end - r->p) < n)
            return -1;
        r->p += n;
        return 0;
    }
    switch (t) {
    case 0xcc: case 0xd0: r->p += 1; break;
    case 0xcd: case 0xd1: r->p += 2; break;
    case 0xca: case 0xce: case 0xd2: r->p += 4; break;
    case 0xcb: case 0xcf: case 0xd3: r->p += 8; break;
    default: return -1; /* extension types, reserved */
    }
    return r->p <= r->end ? 0 : -1;
}

/* An integer value (any msgpack int that fits int64); -1 if it is not an int. */
static int rd_int(rd_t *r, unsigned char t, int64_t *out) {
    uint64_t v;
    if (t <= 0x7f) {
        *out = t;
        return 0;
    }
    if (t >= 0xe0) {
        *out = (int8_t)t;
        return 0;
    }
    switch (t) {
    case 0xcc: if (rd_be(r, 1, &v)) return -1; *out = (int64_t)v; return 0;
    case 0xcd: if (rd_be(r, 2, &v)) return -1; *out = (int64_t)v; return 0;
    case 0xce: if (rd_be(r, 4, &v)) return -1; *out = (int64_t)v; return 0;
    case 0xcf: if (rd_be(r, 8, &v) || v > (uint64_t)INT64_MAX) return -1; *out = (int64_t)v; return 0;
    case 0xd0: if (rd_be(r, 1, &v)) return -1; *out = (int8_t)v; return 0;
    case 0xd1: if (rd_be(r, 2, &v)) return -1; *out = (int16_t)v; return 0;
    case 0xd2: if (rd_be(r, 4, &v)) return -1; *out = (int32_t)v; return 0;
    case 0xd3: if (rd_be(r, 8, &v)) return -1; *out = (int64_t)v; return 0;
    default: return -1;
    }
}

static int set_valid(col_t *c, int64_t row, int valid) {
    size_t byte = (size_t)(row >> 3);
    if (byte >= c->validity.len) {
        if (buf_reserve(&c->validity, byte + 1 - c->validity.len))
            return -1;
        memset(c->validity.p + c->validity.len, 0, byte + 1 - c->validity.len);
        c->validity.len = byte + 1;
    }
    if (valid)
        c->validity.p[byte] |= (unsigned char)(1u << (row & 7));
    else
        c->nulls++;
    return 0;
}

static const char HEX[] = "0123456789abcdef";

static int push_offset(col_t *c) {
    if (c->data.len > INT32_MAX || buf_reserve(&c->offsets, 4))
        return -1;
    int32_t off = (int32_t)c->data.len;
    memcpy(c->offsets.p + c->offsets.len, &off, 4);
    c->offsets.len += 4;
    return 0;
}

/* One value of column c at row `row`. */
static int take_value(rd_t *r, col_t *c, int64_t row) {
    unsigned char t;
    uint64_t n;
    if (c->kind == 'x')
        return skip_value(r, 0);
    if (rd_u8(r, &t))
        return -1;
    int null = (t == 0xc0);
    if (null && c->kind == 'e')
        return -1;
    if (set_valid(c, row, !null))
        return -1;
    switch (c->kind) {
    case 'e':
        if (t != 0xc4 || rd_be(r, 1, &n) || n != 16 || r->end - r->p < 16 || buf_reserve(&c->data, 32))
            return -1;
        for (int i = 0; i < 16; i++) {
            c->data.p[c->data.len++] = (unsigned char)HEX[r->p[i] >> 4];
            c->data.p[c->data.len++] = (unsigned char)HEX[r->p[i] & 0x0f];
        }
        r->p += 16;
        return push_offset(c);
    case 's':
        if (!null) {
            if (rd_str(r, t, &n) || (uint64_t)(r->end - r->p) < n || !utf8_ok(r->p, (size_t)n) ||
                buf_reserve(&c->data, (size_t)n))
                return -1;
            memcpy(c->data.p + c->data.len, r->p, (size_t)n);
            c->data.len += (size_t)n;
            r->p += n;
        }
        return push_offset(c);
    case 'i': {
        int64_t v = 0;
        if (!null && rd_int(r, t, &v))
            return -1;
        if (buf_reserve(&c->data, 8))
            return -1;
        memcpy(c->data.p + c->data.len, &v, 8);
        c->data.len += 8;
        return 0;
    }
    case 'f': {
        double d = 0.0;
        if (!null) {
            int64_t v;
            uint64_t bits;
            if (t == 0xcb) {
                if (rd_be(r, 8, &bits))
                    return -1;
                memcpy(&d, &bits, 8);
            } else if (t == 0xca) {
                float f;
                uint32_t b32;
                if (rd_be(r, 4, &bits))
                    return -1;
                b32 = (uint32_t)bits;
                memcpy(&f, &b32, 4);
                d = f;
            } else if (rd_int(r, t, &v) == 0) {
                /* Past 2^53 an int has no exact double: pyarrow refuses it, and so does this. */
                if (v > (INT64_C(1) << 53) || v < -(INT64_C(1) << 53))
                    return -1;
                d = (double)v;
            } else {
                return -1;
            }
        }
        if (buf_reserve(&c->data, 8))
            return -1;
        memcpy(c->data.p + c->data.len, &d, 8);
        c->data.len += 8;
        return 0;
    }
    case 'b': {
        if (!null && t != 0xc2 && t != 0xc3)
            return -1;
        size_t byte = (size_t)(row >> 3);
        if (byte >= c->data.len) {
            if (buf_reserve(&c->data, byte + 1 - c->data.len))
                return -1;
            memset(c->data.p + c->data.len, 0, byte + 1 - c->data.len);
            c->data.len = byte + 1;
        }
        if (t == 0xc3)
            c->data.p[byte] |= (unsigned char)(1u << (row & 7));
        return 0;
    }
    default:
        return -1;
    }
}

typedef struct {
    const unsigned char *p;
    size_t len;
} span_t;

/* Parse every payload into cols; 0 on success, -1 on anything unexpected. */
static int parse(const span_t *payloads, Py_ssize_t npayloads, const span_t *names, Py_ssize_t ncols, col_t *cols,
                 int64_t *rows_out) {
    int64_t row = 0;
    for (Py_ssize_t k = 0; k < ncols; k++)
        if ((cols[k].kind == 'e' || cols[k].kind == 's') && push_offset(&cols[k]))
            return -1;
    for (Py_ssize_t f = 0; f < npayloads; f++) {
        rd_t r = {payloads[f].p, payloads[f].p + payloads[f].len};
        uint64_t n;
        unsigned char t;
        if (rd_array(&r, &n) || n != 2 || rd_array(&r, &n) || n != (uint64_t)ncols)
            return -1;
        for (Py_ssize_t k = 0; k < ncols; k++) {
            if (rd_u8(&r, &t) || rd_str(&r, t, &n) || n != names[k].len || (uint64_t)(r.end - r.p) < n ||
                memcmp(r.p, names[k].p, (size_t)n) != 0)
                return -1;
            r.p += n;
        }
        uint64_t nrows;
        if (rd_array(&r, &nrows))
            return -1;
        for (uint64_t i = 0; i < nrows; i++, row++) {
            if (rd_array(&r, &n) || n != (uint64_t)ncols)
                return -1;
            for (Py_ssize_t k = 0; k < ncols; k++)
                if (take_value(&r, &cols[k], row))
                    return -1;
        }
        if (r.p != r.end)
            return -1;
    }
    *rows_out = row;
    return 0;
}

static PyObject *bytes_of(const buf_t *b, size_t want) {
    /* Bitmaps end at the last byte a row set: pad to the rows' full width. */
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)want);
    if (!out)
        return NULL;
    size_t have = b->len < want ? b->len : want;
    if (have)
        memcpy(PyBytes_AS_STRING(out), b->p, have);
    if (want > have)
        memset(PyBytes_AS_STRING(out) + have, 0, want - have);
    return out;
}

static PyObject *decode(PyObject *self, PyObject *args) {
    PyObject *payload_list, *name_tuple;
    const char *kinds;
    Py_ssize_t nkinds;
    if (!PyArg_ParseTuple(args, "O!O!y#", &PyList_Type, &payload_list, &PyTuple_Type, &name_tuple, &kinds, &nkinds))
        return NULL;
    Py_ssize_t ncols = PyTuple_GET_SIZE(name_tuple);
    Py_ssize_t npayloads = PyList_GET_SIZE(payload_list);
    if (nkinds != ncols) {
        PyErr_SetString(PyExc_ValueError, "one kind per column");
        return NULL;
    }
    for (Py_ssize_t k = 0; k < ncols; k++) {
        if (!strchr("esifbx", kinds[k]) || kinds[k] == 0) {
            PyErr_Format(PyExc_ValueError, "unknown column kind %c", kinds[k]);
            return NULL;
        }
        if (!PyBytes_Check(PyTuple_GET_ITEM(name_tuple, k))) {
            PyErr_SetString(PyExc_TypeError, "names must be bytes");
            return NULL;
        }
    }
    /* The list is copied: its items stay alive while the GIL is released. */
    PyObject *held = PyList_AsTuple(payload_list);
    if (!held)
        return NULL;
    span_t *payloads = PyMem_Calloc((size_t)npayloads + 1, sizeof(span_t));
    span_t *names = PyMem_Calloc((size_t)ncols + 1, sizeof(span_t));
    col_t *cols = PyMem_Calloc((size_t)ncols + 1, sizeof(col_t));
    PyObject *result = NULL;
    if (!payloads || !names || !cols) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t f = 0; f < npayloads; f++) {
        PyObject *item = PyTuple_GET_ITEM(held, f);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "payloads must be bytes");
            goto done;
        }
        payloads[f].p = (const unsigned char *)PyBytes_AS_STRING(item);
        payloads[f].len = (size_t)PyBytes_GET_SIZE(item);
    }
    for (Py_ssize_t k = 0; k < ncols; k++) {
        PyObject *name = PyTuple_GET_ITEM(name_tuple, k);
        names[k].p = (const unsigned char *)PyBytes_AS_STRING(name);
        names[k].len = (size_t)PyBytes_GET_SIZE(name);
        cols[k].kind = kinds[k];
    }
    int64_t rows = 0;
    int failed;
    Py_BEGIN_ALLOW_THREADS
    failed = parse(payloads, npayloads, names, ncols, cols, &rows);
    Py_END_ALLOW_THREADS
    if (failed) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *columns = PyList_New(ncols);
    if (!columns)
        goto done;
    size_t bitmap = (size_t)((rows + 7) / 8);
    for (Py_ssize_t k = 0; k < ncols; k++) {
        col_t *c = &cols[k];
        PyObject *validity = NULL, *offsets = NULL, *data = NULL, *entry = NULL;
        if (c->kind == 'x') {
            PyList_SET_ITEM(columns, k, Py_NewRef(Py_None));
            continue;
        }
        validity = c->nulls ? bytes_of(&c->validity, bitmap) : Py_NewRef(Py_None);
        if (c->kind == 'e' || c->kind == 's') {
            offsets = bytes_of(&c->offsets, c->offsets.len);
            data = bytes_of(&c->data, c->data.len);
        } else {
            offsets = Py_NewRef(Py_None);
            data = bytes_of(&c->data, c->kind == 'b' ? bitmap : c->data.len);
        }
        if (validity && offsets && data)
            entry = Py_BuildValue("(LOOO)", (long long)c->nulls, validity, offsets, data);
        Py_XDECREF(validity);
        Py_XDECREF(offsets);
        Py_XDECREF(data);
        if (!entry) {
            Py_DECREF(columns);
            goto done;
        }
        PyList_SET_ITEM(columns, k, entry);
    }
    result = Py_BuildValue("(LN)", (long long)rows, columns);
done:
    if (cols)
        for (Py_ssize_t k = 0; k < ncols; k++) {
            free(cols[k].validity.p);
            free(cols[k].offsets.p);
            free(cols[k].data.p);
        }
    PyMem_Free(cols);
    PyMem_Free(names);
    PyMem_Free(payloads);
    Py_DECREF(held);
    return result;
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(payloads, names, kinds) -> None | (rows, columns): msgpack frames as Arrow column buffers."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "flusher._columns", NULL, -1, methods};

PyMODINIT_FUNC PyInit__columns(void) { return PyModule_Create(&module); }
