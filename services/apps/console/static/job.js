// The job page follows the job's Server-Sent Events: status, queue position, step progress
// and the live preview. The browser's EventSource reconnects with Last-Event-ID by itself.
// Text goes in with textContent (never as HTML); previews are data: URIs from the stream.
(function () {
  const live = document.getElementById("live");
  if (!live || live.dataset.terminal === "true") return;
  const id = live.dataset.job;
  const status = document.getElementById("status");
  const queue = document.getElementById("queue");
  const bar = document.getElementById("bar");
  const steps = document.getElementById("steps");
  const preview = document.getElementById("preview");
  const source = new EventSource("/console/jobs/" + encodeURIComponent(id) + "/events");
  source.addEventListener("status", (e) => {
    const job = JSON.parse(e.data);
    status.textContent = job.status;
    status.className = "status s-" + job.status;
    queue.textContent = job.queue_position ? "#" + job.queue_position + " in queue" : "";
  });
  source.addEventListener("progress", (e) => {
    const p = JSON.parse(e.data);
    bar.style.width = Math.round((100 * p.step) / p.steps) + "%";
    steps.textContent = p.stage + " step " + p.step + "/" + p.steps;
    if (p.preview && p.preview.startsWith("data:image/")) {
      preview.src = p.preview;
      preview.hidden = false;
    }
  });
  source.addEventListener("end", (e) => {
    source.close();
    const job = JSON.parse(e.data);
    status.textContent = job.status;
    bar.style.width = job.status === "succeeded" ? "100%" : bar.style.width;
    window.location.reload(); // the finished page: artifacts, timings, verification
  });
})();
