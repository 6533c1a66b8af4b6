// Drawing canvas: draw a digit, then send it through the same upload form as a PNG file.
(function () {
  "use strict";
  const form = document.getElementById("classify");
  const fieldset = document.getElementById("drawing");
  const canvas = document.getElementById("canvas");
  const fileInput = document.getElementById("file");
  if (!form || !canvas || !window.DataTransfer) return;
  fieldset.hidden = false;

  const ctx = canvas.getContext("2d");
  function clear() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  }
  clear();
  ctx.lineWidth = 18;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.strokeStyle = "#000";

  let drawing = false;
  function point(event) {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * canvas.width / box.width,
            (event.clientY - box.top) * canvas.height / box.height];
  }
  canvas.addEventListener("pointerdown", function (event) {
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    ctx.beginPath();
    ctx.moveTo(...point(event));
  });
  canvas.addEventListener("pointermove", function (event) {
    if (!drawing) return;
    ctx.lineTo(...point(event));
    ctx.stroke();
  });
  canvas.addEventListener("pointerup", function () { drawing = false; });
  canvas.addEventListener("pointercancel", function () { drawing = false; });
  document.getElementById("clear").addEventListener("click", clear);

  document.getElementById("classify-drawing").addEventListener("click", function () {
    canvas.toBlob(function (blob) {
      const transfer = new DataTransfer();
      transfer.items.add(new File([blob], "drawing.png", { type: "image/png" }));
      fileInput.files = transfer.files;
      form.submit();
    }, "image/png");
  });
})();
