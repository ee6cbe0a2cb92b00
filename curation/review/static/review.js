// Keyboard shortcuts for the review page; every action is also a plain form, so it works without them.
"use strict";
(function () {
  function click(id) {
    var element = document.getElementById(id);
    if (element) { element.click(); return true; }
    return false;
  }
  function fillEdit() {
    var select = document.getElementById("edit-field");
    var value = document.getElementById("edit-value");
    if (!select || !value) return;
    var option = select.options[select.selectedIndex];
    value.value = option ? option.getAttribute("data-value") || "" : "";
    // A field the item does not show starts empty: say so, or an empty box reads as an empty field.
    var shown = option && option.getAttribute("data-shown") === "1";
    value.placeholder = shown ? "" : value.getAttribute("data-unshown");
  }
  document.addEventListener("DOMContentLoaded", function () {
    var select = document.getElementById("edit-field");
    if (select) { select.addEventListener("change", fillEdit); fillEdit(); }
    // From the text or a span's checkbox ("not PII", "PII again"): the whole editor saves with the keys.
    var form = document.getElementById("edit-form");
    if (form) {
      form.addEventListener("keydown", function (event) {
        if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
          event.preventDefault();
          form.requestSubmit();
        }
      });
    }
  });
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var target = event.target;
    var typing = target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT");
    if (typing) {
      if (event.key === "Escape") target.blur();
      return;
    }
    var handled = false;
    switch (event.key) {
      case "a": handled = click("approve"); break;
      case "r": handled = click("reject"); break;
      case "d": handled = click("keep"); break;  // not a duplicate (near-duplicate items)
      case "u": handled = click("undo-button"); break;
      case "j": case "n": handled = click("next"); break;
      case "k": case "p": handled = click("previous"); break;
      case "e":
        var field = document.getElementById("edit-value");
        if (field) { field.focus(); handled = true; }
        break;
    }
    if (handled) event.preventDefault();
  });
})();
