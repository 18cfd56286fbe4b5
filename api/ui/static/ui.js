// The live log of a job page: follows /ui/jobs/{id}/log (server-sent events) and appends
// each line as text (never as HTML: log lines are whatever a handler wrote).
"use strict";
(function () {
  function follow() {
    var log = document.getElementById("job-log");
    if (!log || log.dataset.live !== "yes" || !window.EventSource) return;
    var status = document.getElementById("job-log-status");
    var source = new EventSource(log.dataset.stream);
    source.addEventListener("log", function (event) {
      var line = JSON.parse(event.data);
      var span = document.createElement("span");
      span.className = "line";
      var time = document.createElement("time");
      time.textContent = String(line.at).replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z");
      span.appendChild(time);
      span.appendChild(document.createTextNode(" " + line.line + "\n"));
      log.appendChild(span);
    });
    source.addEventListener("end", function (event) {
      source.close();
      var end = JSON.parse(event.data);
      if (status) status.textContent = "The job has finished (" + end.state + "); this is its whole log.";
    });
    source.onerror = function () {
      if (status) status.textContent = "The live log stopped; reload to see more.";
      source.close();
    };
    if (status) status.textContent = "Following the log live.";
  }
  document.addEventListener("DOMContentLoaded", follow);
})();
