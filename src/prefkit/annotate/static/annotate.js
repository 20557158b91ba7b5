// Keyboard shortcuts and time-on-item for the annotation page (no build step, no libraries).
(() => {
  "use strict";
  const form = document.getElementById("answer-form");
  const skipForm = document.getElementById("skip-form");
  const undoForm = document.getElementById("undo-form");

  // Time the page was visible, so a tab left in the background does not count.
  let visibleMs = 0;
  let visibleSince = document.visibilityState === "visible" ? performance.now() : null;
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      visibleSince = performance.now();
    } else if (visibleSince !== null) {
      visibleMs += performance.now() - visibleSince;
      visibleSince = null;
    }
  });
  const secondsOnItem = () =>
    (visibleMs + (visibleSince === null ? 0 : performance.now() - visibleSince)) / 1000;

  // One submission per page: a second click or key press while the first is on its way is dropped.
  let sending = false;
  for (const each of [form, skipForm, undoForm]) {
    if (!each) continue;
    each.addEventListener("submit", (event) => {
      if (sending) {
        event.preventDefault();
        return;
      }
      sending = true;
      if (each === form) form.elements.seconds.value = secondsOnItem().toFixed(2);
    });
  }

  const typing = (target) =>
    target instanceof HTMLTextAreaElement ||
    target instanceof HTMLSelectElement ||
    (target instanceof HTMLInputElement && !["radio", "checkbox"].includes(target.type));

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (typing(event.target)) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    const key = event.key.toLowerCase();
    if (form) {
      const choice = form.querySelector(`input[data-key="${CSS.escape(key)}"]`);
      if (choice) {
        choice.checked = true;
        choice.focus();
        event.preventDefault();
        return;
      }
      if (key === "enter") {
        event.preventDefault();
        form.requestSubmit();
        return;
      }
    }
    if (key === "s" && skipForm) {
      event.preventDefault();
      skipForm.requestSubmit();
    } else if (key === "u" && undoForm) {
      event.preventDefault();
      undoForm.requestSubmit();
    }
  });
})();
