// Home page extras. The form works without them: upload is plain HTML.
(function () {
  "use strict";
  const form = document.getElementById("classify");
  if (!form) return;

  // Model picker: show the chosen model's description.
  const picker = document.getElementById("model");
  function describe() {
    document.querySelectorAll("#model-about [data-model]").forEach(function (hint) {
      hint.hidden = hint.dataset.model !== picker.value;
    });
  }
  picker.addEventListener("change", describe);
  describe();

  // Drawing canvas: draw a digit, then send it through the same form as a PNG file.
  const canvas = document.getElementById("canvas");
  const fileInput = document.getElementById("file");
  const classify = document.getElementById("classify-drawing");
  if (!window.DataTransfer || !canvas.getContext) return;
  document.getElementById("drawing").hidden = false;

  const ctx = canvas.getContext("2d");
  let drawing = false;

  function clear() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    classify.disabled = true;
  }
  function point(event) {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * canvas.width / box.width,
            (event.clientY - box.top) * canvas.height / box.height];
  }
  function stroke(event) {
    ctx.lineTo(...point(event));
    ctx.stroke();
    classify.disabled = false;
  }

  clear();
  // Thick, round strokes on white: what the preprocessing expects of a pen on paper.
  ctx.lineWidth = 18;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.strokeStyle = "#000";

  canvas.addEventListener("pointerdown", function (event) {
    if (event.button !== 0) return;
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    ctx.beginPath();
    ctx.moveTo(...point(event));
    stroke(event);  // a tap leaves a dot
  });
  canvas.addEventListener("pointermove", function (event) {
    if (drawing) stroke(event);
  });
  canvas.addEventListener("pointerup", function () { drawing = false; });
  canvas.addEventListener("pointercancel", function () { drawing = false; });
  document.getElementById("clear").addEventListener("click", clear);

  classify.addEventListener("click", function () {
    canvas.toBlob(function (blob) {
      const transfer = new DataTransfer();
      transfer.items.add(new File([blob], "drawing.png", { type: "image/png" }));
      fileInput.files = transfer.files;
      form.submit();
    }, "image/png");
  });
})();
