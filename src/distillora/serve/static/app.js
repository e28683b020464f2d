// Clicking an example fills the text box (served as a file so the CSP can forbid inline scripts).
document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("button.example")) {
    b.addEventListener("click", () => {
      const t = document.getElementById("text");
      t.value = b.dataset.text;
      t.focus();
    });
  }
});
