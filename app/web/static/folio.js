// Citation chips: Gradio renders chat Markdown itself, so a click on a chip link
// (href "#folio-cite-<turn>-<chip>") is caught here and handed to the hidden textbox whose
// change event opens the page; a nonce makes a repeated click on the same chip count.
document.addEventListener("click", function (event) {
  var link = event.target && event.target.closest ? event.target.closest('a[href*="#folio-cite-"]') : null;
  if (!link) return;
  event.preventDefault();
  event.stopPropagation();
  var ref = link.getAttribute("href").split("#folio-cite-")[1];
  var box = document.querySelector("#folio-cite-ref textarea, #folio-cite-ref input");
  if (!box) return;
  box.value = ref + "|" + Date.now();
  box.dispatchEvent(new Event("input", { bubbles: true }));
}, true);
