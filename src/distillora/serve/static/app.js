// Clicking an example fills the text box, and the second box of a pair run (served as a file so the
// CSP can forbid inline scripts).
document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("button.example")) {
    b.addEventListener("click", () => {
      const t = document.getElementById("text");
      t.value = b.dataset.text;
      const pair = document.getElementById("text_pair");
      if (pair && b.dataset.pair !== undefined) pair.value = b.dataset.pair;
      t.focus();
    });
  }
});
