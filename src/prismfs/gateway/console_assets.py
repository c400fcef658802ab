"""The web console's stylesheet and script, served as ``/ui/console.css`` and
``/ui/console.js`` (no build step: what is here is what the browser gets).

The script only adds to pages that work without it: drag-and-drop uploads
with a progress bar on a directory's page. Every other page is plain HTML
that refreshes itself with a ``<meta http-equiv="refresh">``.
"""

CSS = """
:root { --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --fg: #1f2328; --muted: #59636e;
  --line: #d1d9e0; --bg: #ffffff; --panel: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: var(--bg); }
a { color: var(--accent); }
a:focus, button:focus, input:focus, summary:focus { outline: 3px solid #fb8500;
  outline-offset: 2px; }
.skip { position: absolute; left: -999px; top: 0; background: #fff; padding: .5em; }
.skip:focus { left: .5em; z-index: 10; }
header.top { display: flex; flex-wrap: wrap; align-items: center; gap: .5em 1.5em;
  padding: .6em 1em; background: #24292f; color: #fff; }
header.top a { color: #fff; }
header.top .brand { font-weight: 700; text-decoration: none; }
header.top nav ul { display: flex; flex-wrap: wrap; gap: .3em 1em; list-style: none;
  margin: 0; padding: 0; }
header.top nav a[aria-current="page"] { font-weight: 700; text-decoration: underline; }
header.top form { margin: 0 0 0 auto; }
main { padding: 1em; max-width: 80em; margin: 0 auto; }
h1 { font-size: 1.4em; margin: .2em 0 .6em; }
h2 { font-size: 1.15em; margin: 1.2em 0 .5em; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(15em, 1fr)); gap: .8em; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: .7em .9em;
  background: var(--panel); }
.card .big { font-size: 1.6em; font-weight: 700; }
.muted { color: var(--muted); }
.ok { color: var(--ok); } .warn { color: var(--warn); } .bad { color: var(--bad); }
.badge { display: inline-block; padding: 0 .45em; border-radius: 1em; font-size: .85em;
  border: 1px solid currentColor; white-space: nowrap; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { background: var(--panel); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
meter, progress { width: 9em; height: 1em; vertical-align: middle; }
button, .button { font: inherit; padding: .3em .8em; border-radius: 6px;
  border: 1px solid var(--line);
  background: #f6f8fa; color: var(--fg); cursor: pointer; text-decoration: none;
  display: inline-block; }
button.danger { background: var(--bad); color: #fff; border-color: var(--bad); }
button.primary { background: var(--ok); color: #fff; border-color: var(--ok); }
.actions { display: flex; flex-wrap: wrap; gap: .4em; }
.notice { border-left: 4px solid var(--accent); background: var(--panel);
  padding: .5em .8em; margin: .6em 0; }
.notice.bad { border-color: var(--bad); }
.drop { border: 2px dashed var(--line); border-radius: 8px; padding: 1em; margin: .8em 0; }
.drop.over { border-color: var(--accent); background: #ddf4ff; }
svg.chart { width: 100%; max-width: 42em; height: auto; background: var(--panel);
  border-radius: 6px; }
svg.chart polyline { fill: none; stroke: var(--accent); stroke-width: 2; }
svg.chart text { font-size: 11px; fill: var(--muted); }
svg.chart line { stroke: var(--line); }
label { display: block; margin: .5em 0 .2em; }
label.inline { display: inline; margin: 0; }
input[type=password], input[type=text] { font: inherit; padding: .35em;
  width: min(100%, 30em); }
code { font-size: .92em; }
@media (max-width: 40em) {
  main { padding: .6em; }
  th.wide, td.wide { display: none; }
}
"""

JS = """
// Drag-and-drop uploads with a progress bar (the page works without this).
(function () {
  var zone = document.getElementById("upload");
  if (!zone) { return; }
  var input = document.getElementById("upload-files");
  var bar = document.getElementById("upload-progress");
  var status = document.getElementById("upload-status");
  var dir = zone.getAttribute("data-dir");
  var csrf = zone.getAttribute("data-csrf");
  zone.hidden = false;
  function send(files, i) {
    if (i >= files.length) { status.textContent = "Uploaded " + files.length + " file(s).";
  location.reload(); return; }
    var f = files[i];
    var xhr = new XMLHttpRequest();
    var path = (dir === "/" ? "" : dir) + "/" + f.name;
    xhr.open("PUT", "/ui/upload" + path.split("/").map(encodeURIComponent).join("/"));
    xhr.setRequestHeader("X-Console-CSRF", csrf);
    xhr.upload.onprogress = function (e) {
      if (e.lengthComputable) { bar.max = e.total; bar.value = e.loaded; }
      status.textContent = "Uploading " + f.name + "\\u2026";
    };
    xhr.onload = function () {
      if (xhr.status >= 200 && xhr.status < 300) { bar.value = bar.max; send(files, i + 1); }
      else {
        var detail = "";
        try { detail = JSON.parse(xhr.responseText).detail;
  } catch (e) { detail = xhr.statusText; }
        status.textContent = "Upload of " + f.name + " failed: " + detail;
      }
    };
    xhr.onerror = function () {
      status.textContent = "Upload of " + f.name + " failed: no answer.";
    };
    xhr.send(f);
  }
  input.addEventListener("change", function () { send(input.files, 0); });
  zone.addEventListener("dragover", function (e) { e.preventDefault();
  zone.classList.add("over"); });
  zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
  zone.addEventListener("drop", function (e) {
    e.preventDefault(); zone.classList.remove("over"); send(e.dataTransfer.files, 0);
  });
})();
"""
