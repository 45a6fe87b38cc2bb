  // Inserted at /*LEGACY2016*/ inside oceanus.js (collector/web.py render_tag): not a script
  // of its own. Served as /oceanus-2016.js and at the 2016 paths of the tag.
  // -- the 2016 tag's API (okeanides.js), for pages still carrying its snippet:
  // `var oceanus = oceanus || []; oceanus.q = [{...}]; oceanus.autosend = false;
  // oceanus.click = [];` then `oceanus.q.push({evt, oid, uid, jsn, url, ...})`.
  // Each event is the query string that tag sent, to the URL it sent it to.

  function param(name, text) {
    var m = new RegExp('[?&]' + name.replace(/[\[\]]/g, '\\$&') + '(=([^&#]*)|&|#|$)').exec(text || loc.href);
    if (!m) return null;
    return m[2] ? decodeURIComponent(m[2].replace(/\+/g, ' ')) : '';
  }

  function cookieValue(name) {
    var m = d.cookie.match(new RegExp('(?:^|;\\s*)' + name + '=([^;]*)'));
    return m ? unescape(m[1]) : null;
  }

  function legacySend(o) {
    if (blocked()) return;
    o = o || {};
    var de = d.documentElement, jsn = o.jsn || {}, a = {}, p = [], k, kw, cat, mi = w.memberInfo, img = new Image();
    a.oid = o.oid || 2;
    a.evt = o.evt || 'pageview';
    a.uid = o.uid || null;
    a.ref = String(o.ref || d.referrer).substr(0, 1024);
    a.tit = String(o.tit || d.title).substr(0, 256);
    a.url = String(o.url || d.URL).substr(0, 1024);
    a.enc = d.charset;
    a.scr = screen.width + 'x' + screen.height;
    a.vie = de.clientWidth + 'x' + de.clientHeight;
    a.jsn = o.jsn || null;
    // bizocean's site search: the keyword and category of the page, in jsn.
    kw = param('keyword');
    if (kw && typeof jsn == 'object') {
      jsn.kwd = kw;
      cat = loc.pathname.match(/\/search\/([0-9]+)/);
      if (cat) jsn.cat = decodeURIComponent(cat[1]);
    }
    if (Object.keys(Object(jsn)).length) a.jsn = JSON.stringify(jsn);
    if (!a.uid) {
      k = param('member_state[id]', cookieValue('auth_state'));
      if (k) a.uid = k;
      else if (mi && mi.member_state && typeof mi.member_state.id != 'undefined') a.uid = mi.member_state.id || null;
    }
    a.sid = sid;
    // Only values that are set; keys starting with _ never (okeanides.js).
    for (k in a) if (a[k] && k.charAt(0) != '_') p.push(encodeURIComponent(k) + '=' + encodeURIComponent(a[k]));
    if (typeof o.onload == 'function') img.onload = o.onload;
    if (typeof o.onerror == 'function') img.onerror = o.onerror;
    imgs.push(img);
    img.src = (o.oceanus_url || cfg.endpoint + '/swallow') + '?' + p.join('&');
  }

  function legacyClick(e, a) {
    var text = (a.innerText || '').replace(/\s+/g, ' '), pics = a.getElementsByTagName('img'), alt = '', t, i,
      ev = {evt: 'linkclick', url: a.getAttribute('href'), ref: d.location.href, jsn: {}, tit: ''};
    for (i = 0; i < pics.length; i++) {
      t = pics[i].getAttribute('alt');
      if (t) alt += t;
    }
    if (text) ev.tit += '[text]' + text;
    if (alt) ev.tit += '[alt]' + alt;
    ev.jsn.pageX = Math.floor(e.pageX);
    ev.jsn.pageY = Math.floor(e.pageY);
    w.oceanus.q.push(ev);
  }

  // Every <a> of the page once it has loaded, as okeanides.js did (not only outbound links).
  function legacyClicks() {
    function attach() {
      var links = d.getElementsByTagName('a'), i;
      for (i = 0; i < links.length; i++) {
        links[i].addEventListener('click', function (e) {
          legacyClick(e, this);
        });
      }
    }
    if (d.readyState == 'complete') attach();
    else w.addEventListener('load', attach);
  }

  function legacy(o) {
    var q = o.q || [], i, keys = Object.keys(q);
    o.v = 1;
    // The 2016 cookie was set for the whole site (domain .bizocean.jp): `oceanus.cookieDomain`
    // in the snippet keeps it so; without it the cookie is the page host's.
    if (o.cookieDomain) cfg.domain = o.cookieDomain;
    if (blocked()) return;
    cookie();
    for (i = 0; i < keys.length; i++) if (typeof q[keys[i]] == 'object') legacySend(q[keys[i]]);
    o.q = [];
    o.q.push = function (ev) {
      legacySend(ev);
    };
    if (typeof o.autosend == 'undefined') o.autosend = true;
    if (o.autosend) legacySend();
    if (o.click) legacyClicks();
    else o.click = [];
    o.click.push = legacyClicks;
  }

