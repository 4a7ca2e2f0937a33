// Caracal dashboard: live figures without a reload. Every 2 s ask /ui/state for a version (it changes when
// the ledger grows or a verification moves on); when it changed, fetch this page again and swap its
// #live part in place. No library, no build step.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!live || !live.hasAttribute("data-live")) { return; }
  var version = null;
  var busy = false;

  function show(text) { if (status) { status.textContent = text; } }

  function swap() {
    return fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("live");
        if (fresh) {
          var open = {};
          live.querySelectorAll("details[open]").forEach(function (d, i) { open[i] = true; });
          live.innerHTML = fresh.innerHTML;
          live.querySelectorAll("details").forEach(function (d, i) { if (open[i]) { d.open = true; } });
        }
      });
  }

  function poll() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch("/ui/state", { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (response) {
        if (response.status === 401) { window.location.assign("/ui/login"); throw new Error("signed out"); }
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (state) {
        var changed = version !== null && state.version !== version;
        version = state.version;
        document.body.setAttribute("data-version", state.version);
        show("Live: updated " + new Date().toLocaleTimeString() + ".");
        return changed ? swap() : null;
      })
      .catch(function (error) { show("Live updates paused (" + error.message + "); retrying."); })
      .then(function () { busy = false; });
  }

  poll();
  window.setInterval(poll, 2000);
})();
