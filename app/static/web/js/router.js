// Navigation state shared by the shell and the pages: what to stop when a page is left, and a
// hook the shell sets to redraw the header when the signed-in user changes.

let cleanups = [];
let identityHook = () => {};

// A page registers what to stop (timers) when the reader navigates away.
export function onLeave(stop) {
  cleanups.push(stop);
}

export function leave() {
  for (const stop of cleanups) stop();
  cleanups = [];
}

export function navigate(hash) {
  window.location.hash = hash;
}

export function setIdentityHook(hook) {
  identityHook = hook;
}

export function identityChanged() {
  identityHook();
}

// Re-run `poll` every `seconds` while the page is shown (and the tab visible).
export function every(seconds, poll) {
  const timer = window.setInterval(() => {
    if (document.visibilityState === "visible") poll();
  }, seconds * 1000);
  onLeave(() => window.clearInterval(timer));
}
