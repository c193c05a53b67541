// Ferry console: keeps live regions up to date with server-sent events.
// Every page works without this script; it only saves reloading.
"use strict";

// follow replaces el's content with each "html" event of its stream, and
// keeps the keyboard focus on the same link or control when it can.
function follow(el) {
  const src = new EventSource(el.dataset.stream);
  src.addEventListener("html", (e) => {
    const active = el.contains(document.activeElement) ? document.activeElement : null;
    const key = active && (active.id || active.getAttribute("href"));
    el.innerHTML = e.data;
    if (key) {
      const again = document.getElementById(key) || el.querySelector(`[href="${CSS.escape(key)}"]`);
      if (again) again.focus();
    }
    el.dispatchEvent(new CustomEvent("ferry:updated", { bubbles: true }));
  });
  src.addEventListener("done", () => src.close());
  src.addEventListener("signed-out", () => {
    src.close();
    window.location.reload();
  });
}

document.querySelectorAll("[data-stream]").forEach(follow);
