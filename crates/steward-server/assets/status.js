// Keeps the status page fresh without inline script (the CSP forbids it).
(function () {
  var REFRESH_MS = 30000;
  var updated = document.getElementById('updated');
  var loaded = Date.now();
  function tick() {
    if (!updated) return;
    var s = Math.round((Date.now() - loaded) / 1000);
    updated.textContent = s < 5 ? 'just now' : s + ' s ago';
  }
  tick();
  setInterval(tick, 1000);
  setTimeout(function () { location.reload(); }, REFRESH_MS);
})();
