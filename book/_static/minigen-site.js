// Both sidebar buttons of each kind work (added to every page by book/_ext/minigen_book.py).
//
// sphinx-book-theme 1.3.0 and pydata-sphinx-theme 0.17.1 attach their handlers to the first
// `.primary-toggle` and the first `.secondary-toggle` of the page only (`document.querySelector`),
// and the first of each is pydata's navbar button, which sphinx-book-theme hides: the buttons a
// reader sees, in the article header, did nothing. A click on one of them is handed to the wired
// button, which opens the sidebar as a dialog on a narrow screen (pydata-sphinx-theme) and hides or
// shows the left sidebar on a wide one (sphinx-book-theme). Checked by tests/test_browser.py.
document.addEventListener("DOMContentLoaded", () => {
  for (const kind of ["primary", "secondary"]) {
    const [wired, ...others] = document.querySelectorAll(`.${kind}-toggle`);
    for (const button of others) {
      button.addEventListener("click", (event) => {
        event.preventDefault();
        event.stopPropagation();
        wired.click();
      });
    }
  }
});
