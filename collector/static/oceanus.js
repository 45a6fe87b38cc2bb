/*! oceanus.js - the oceanus browser tag - MIT */
// Load with the async snippet (README "Browser tag"): calls made before this file
// arrives wait in oceanus.q and are replayed here, `init` first.
(function (w, d) {
  'use strict';
  var old = w.oceanus;
  // Loaded twice: keep the first instance.
  if (old && old.v) return;
  // Field limits of every stream, filled in by the collector from its config so
  // the tag trims values instead of having a whole event refused:
  // {stream: {field: [max_length or 0, pattern, is_email]}}.
  var S = /*SCHEMA*/{};
  var nav = navigator, loc = location, cfg = null, sid = '', uid = '', ref = d.referrer, last = '';
  var held = [], imgs = [];
  var me = d.currentScript || d.querySelector('script[src*="oceanus.js"]');

  function str(v, n) {
    v = v == null ? '' : String(v);
    // Cut on a character, never inside a surrogate pair (the server counts characters).
    if (n && v.length > n) v = v.slice(0, /[\ud800-\udbff]/.test(v.charAt(n - 1)) ? n - 1 : n);
    return v;
  }

  function bytes(v) {
    return new Blob([v]).size;
  }

  function ok(rule, v) {
    if (rule[2] && !/^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$/.test(v)) return false;
    try {
      return !rule[1] || new RegExp(rule[1]).test(v);
    } catch (e) {
      // A Python-only pattern: let the server judge.
      return true;
    }
  }

  // Keep the stream's own fields, trimmed to their limits; a value the stream
  // would refuse (pattern, email) moves into jsn rather than losing the event.
  function fit(stream, ev, into) {
    var f = S[stream], out = {}, k, v, r, j;
    if (!f) return ev;
    for (k in ev) {
      v = ev[k];
      r = f[k];
      if (v == null || v === '' || !r) continue;
      if (k == 'jsn') {
        j = typeof v == 'string' ? v : JSON.stringify(v);
        if (r[0] && bytes(j) > r[0]) v = {truncated: bytes(j)};
      } else if (typeof v != 'object') {
        v = str(v, r[0]);
        if (!ok(r, v)) {
          if (into) into[k] = v;
          continue;
        }
      }
      out[k] = v;
    }
    return out;
  }

  function blocked() {
    return (cfg.dnt && (nav.doNotTrack == '1' || w.doNotTrack == '1')) || (cfg.gpc && nav.globalPrivacyControl === true);
  }

  function cookie() {
    // 1-32 hex digits: the 2016 tag drew 16, and a returning visitor keeps the id it has.
    var m = d.cookie.match(/(?:^|;\s*)oceanus_sid=([0-9a-fA-F]{1,32})(?:;|$)/), c, b, i;
    if (m) {
      sid = m[1];
    } else {
      b = new Uint8Array(16);
      w.crypto.getRandomValues(b);
      for (sid = '', i = 0; i < 16; i++) sid += (b[i] + 256).toString(16).slice(1);
    }
    // Re-written on every page so the lifetime counts from the last visit.
    c = 'oceanus_sid=' + sid + '; path=/; SameSite=' + cfg.sameSite;
    if (cfg.days) c += '; max-age=' + Math.round(cfg.days * 86400);
    if (cfg.domain) c += '; domain=' + cfg.domain;
    if (loc.protocol == 'https:' || /none/i.test(cfg.sameSite)) c += '; Secure';
    d.cookie = c;
  }

  function pixel(stream, ev) {
    var p = [], k, v, img = new Image();
    for (k in ev) {
      v = ev[k];
      p.push(encodeURIComponent(k) + '=' + encodeURIComponent(typeof v == 'object' ? JSON.stringify(v) : v));
    }
    // Hold a reference until the request ends, or the image may be collected first.
    imgs.push(img);
    img.onload = img.onerror = function () {
      imgs.splice(imgs.indexOf(img), 1);
    };
    img.src = cfg.endpoint + '/b/' + stream + '?' + p.join('&');
  }

  function send(stream, ev) {
    if (blocked()) return;
    var url = cfg.endpoint + '/e/' + stream, body = JSON.stringify(ev), t = cfg.transport;
    // A text/plain body is a "simple" request: no CORS preflight, so it also
    // works from sendBeacon and keeps going while the page unloads.
    try {
      if (t == 'beacon' && nav.sendBeacon && nav.sendBeacon(url, body)) return;
    } catch (e) {}
    if (t != 'pixel' && w.fetch) {
      try {
        return fetch(url, {method: 'POST', body: body, keepalive: true, credentials: 'omit',
          headers: {'Content-Type': 'text/plain'}}).catch(function () {
          pixel(stream, ev);
        });
      } catch (e) {}
    }
    pixel(stream, ev);
  }

  function base(evt) {
    var s = w.screen || {};
    return {sid: sid, evt: evt, uid: uid, url: loc.href, ref: ref, tit: d.title, scr: s.width + 'x' + s.height,
      vie: w.innerWidth + 'x' + w.innerHeight, enc: d.characterSet};
  }

  function track(evt, data) {
    var ev = base(evt), jsn = {}, k, any = false;
    if (data && typeof data == 'object') {
      for (k in data) {
        if (k == 'oid') ev.oid = data[k];
        else {
          jsn[k] = data[k];
          any = true;
        }
      }
    }
    if (any) ev.jsn = jsn;
    send(cfg.stream, fit(cfg.stream, ev));
  }

  // A page view; the previous page's URL becomes the referrer of the next one
  // on single-page-app navigation, as a full page load would have it.
  function page(force) {
    var u = loc.href;
    if (u == last && !force) return;
    if (last && u != last) ref = last;
    last = u;
    track('page');
  }

  function spa() {
    // Deferred: frameworks set the new title just after pushState.
    setTimeout(page, 0);
  }

  function hook(name) {
    var orig = history[name];
    history[name] = function () {
      var r = orig.apply(this, arguments);
      spa();
      return r;
    };
  }

  function click(e) {
    var a = e.target && e.target.closest && e.target.closest('a[href]'), links, i;
    if (!a || typeof a.href != 'string' || !/^https?:$/.test(a.protocol) || a.hostname == loc.hostname) return;
    if (e.type == 'auxclick' && e.button != 1) return;
    links = d.links;
    for (i = 0; i < links.length && links[i] != a; i++);
    track('click', {href: a.href, text: str((a.innerText || '').replace(/\s+/g, ' '), 100), x: Math.round(e.pageX),
      y: Math.round(e.pageY), idx: i});
  }

  function submit(e) {
    var f = e.target, els, el, i, n, v, ev = {sid: sid}, other = {}, fs = cfg.formStream, own = S[fs] || {};
    if (!f || !f.getAttribute || f.getAttribute('data-oceanus-form') == null) return;
    els = f.elements;
    for (i = 0; i < els.length; i++) {
      el = els[i];
      n = el.getAttribute('data-oceanus-field') || el.getAttribute('name');
      // Never secrets or files, nor what the page marked to skip.
      if (!n || el.disabled || el.hasAttribute('data-oceanus-ignore') ||
        /^(password|file|hidden|submit|button|reset|image)$/.test(el.type) ||
        (/^(checkbox|radio)$/.test(el.type) && !el.checked)) continue;
      v = el.type == 'select-multiple' ? [].filter.call(el.options, function (o) {
        return o.selected;
      }).map(function (o) {
        return o.value;
      }).join(',') : String(el.value).trim();
      if (own[n] && n != 'sid' && n != 'jsn') ev[n] = v;
      else other[n] = str(v, 1000);
    }
    ev = fit(fs, ev, other);
    ev.jsn = {form: f.getAttribute('data-oceanus-form') || f.getAttribute('id') || '', url: loc.href, fields: other};
    send(fs, fit(fs, ev));
  }

  function ready(fn) {
    if (d.readyState == 'loading') d.addEventListener('DOMContentLoaded', fn);
    else fn();
  }

  function settings(o) {
    cfg = {
      endpoint: (o.endpoint || (me && me.src ? new URL(me.src).origin : loc.origin)).replace(/\/+$/, ''),
      stream: o.stream || 'pageview',
      formStream: o.formStream || 'form',
      domain: o.cookieDomain || '',
      days: o.cookieDays == null ? 730 : o.cookieDays,
      sameSite: o.sameSite || 'Lax',
      // Privacy signals are honoured unless the site opts out with {dnt: false} / {gpc: false}.
      dnt: o.dnt !== false,
      gpc: o.gpc !== false,
      transport: o.transport || 'beacon'
    };
  }

  function init(o) {
    if (cfg) return;
    o = o || {};
    settings(o);
    uid = o.uid || '';
    // Honoured privacy signals: no cookie, no listeners, nothing sent.
    if (blocked()) return;
    cookie();
    if (o.clicks !== false) {
      d.addEventListener('click', click, true);
      d.addEventListener('auxclick', click, true);
    }
    if (o.forms !== false) d.addEventListener('submit', submit, true);
    if (o.spa !== false) {
      hook('pushState');
      hook('replaceState');
      w.addEventListener('popstate', spa);
    }
    if (o.page !== false) ready(page);
  }

  /*LEGACY2016*/
  function call(a) {
    var c = a[0];
    if (c == 'init') {
      init(a[1]);
      while (held.length) call(held.shift());
    } else if (!cfg) {
      held.push(a);
    } else if (c == 'track') {
      track(str(a[1], 16), a[2]);
    } else if (c == 'page') {
      page(true);
    } else if (c == 'identify') {
      uid = a[1] || '';
    }
  }

  // The 2016 snippet makes window.oceanus an array: its API is in /oceanus-2016.js
  // (the same tag plus that API), kept out of this file so every other page stays small.
  if (Array.isArray(old)) {
    settings({});
    if (typeof legacy == 'function') legacy(old);
    else d.head.appendChild(d.createElement('script')).src = cfg.endpoint + '/oceanus-2016.js';
    return;
  }

  function api() {
    call(arguments);
  }
  api.v = 1;
  w.oceanus = api;
  var q = (old && old.q) || [], i;
  for (i = 0; i < q.length; i++) if (q[i][0] == 'init') call(q[i]);
  for (i = 0; i < q.length; i++) if (q[i][0] != 'init') call(q[i]);
})(window, document);
