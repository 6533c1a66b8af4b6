"""Fuzzing the API: what a careless or hostile client sends, and what every answer must look like.

Each strategy starts from a valid request and breaks a thing or two, or nothing: a fuzzer whose
every request fails the first check (not JSON, say) tests one line of the server.
``fault`` judges the answers, for the hypothesis tests and the schemathesis run alike.
"""

from __future__ import annotations

import io
import json
import math
import struct
from urllib.parse import quote

import numpy as np
from hypothesis import strategies as st
from PIL import Image
from urllib3 import encode_multipart_formdata

from .digits import digit_png, held_out_digits

# The embedded digits model: FP32 [-1, 64] in, INT64 label [-1] and FP32 probabilities [-1, 10] out.
MODEL = "digits"
INPUT = "input"
OUTPUTS = ("label", "probabilities")
FEATURES = 64
MAX_BATCH = 64
DATATYPES = ("FP32", "FP64", "FP16", "INT64", "INT32", "INT8", "UINT8", "BOOL", "BYTES")

# Paths that answer people: their errors are pages.
PAGES = ("/?", "/predict", "/models/", "/static/")


def fault(method: str, path: str, status: int, content_type: str, body: bytes, accept: str = "") -> str | None:
    """What is wrong with an answer, or None: a server error, a trace, an error that does not explain itself.

    An error is JSON ``{"error": "..."}``, or an HTML page on the pages and for a client that asks for HTML.
    """
    if status >= 500:
        return "a server error"
    if b"Traceback" in body:
        return "a traceback in the body"
    if status < 400 or method == "HEAD":
        return None
    if content_type.startswith("text/html"):
        page = path == "/" or path.startswith(PAGES)
        return None if page or "html" in accept.lower() else "an HTML error on an API path"
    if not content_type.startswith("application/json"):
        return f"an error as {content_type or 'no content type'!r}, not JSON"
    try:
        error = json.loads(body)
    except ValueError:
        return "an error body that is not JSON"
    if not (isinstance(error, dict) and list(error) == ["error"] and isinstance(error["error"], str)):
        return 'an error body other than {"error": "..."}'
    if not error["error"]:
        return "an empty error message"
    return None


# -- JSON values ---------------------------------------------------------------------------

# Python's json writes NaN and Infinity literals, which no JSON parser should accept.
numbers = st.one_of(
    st.floats(0, 1),
    st.floats(width=32),
    st.floats(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 1e38, 3.5e38, 1e308, -1e308, 2**63, -(2**63) - 1, 2**64]),
)
nan_like = st.sampled_from(["NaN", "nan", "inf", "-Infinity", "1e999", "0x10", "", " 1", "1,5", "null", "\u0661"])
scalars = st.one_of(st.none(), st.booleans(), numbers, nan_like, st.text(max_size=12))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def to_json(doc) -> bytes:
    return json.dumps(doc).encode()


# -- Open Inference Protocol requests ------------------------------------------------------

batches = st.one_of(st.integers(1, 4), st.sampled_from([0, MAX_BATCH, MAX_BATCH + 1]))
dims = st.one_of(
    st.integers(-2, 130),
    st.sampled_from([2**31, 2**63 - 1, -(2**63), 2**64, 10**30]),
    st.floats(allow_nan=False), st.text(max_size=4), st.booleans(), st.none(), st.lists(st.integers(0, 9), max_size=2),
)
shapes = st.one_of(batches.map(lambda n: [n, FEATURES]), st.lists(dims, max_size=5), json_values)


def element_count(shape) -> int | None:
    """How many values a shape needs, when it is one a client could fill; else None."""
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d <= 10_000 for d in shape):
        return None
    count = math.prod(shape)
    return count if count <= 5_000 else None


def tensor_data(draw, shape) -> list:
    """Values for ``shape``: one float repeated, flat or nested by rows; anything for a shape no one could fill."""
    count = element_count(shape)
    if count is None:
        return draw(json_values)
    values = [draw(st.floats(0, 1))] * count
    if len(shape) == 2 and shape[1] and draw(st.booleans()):
        return [values[row : row + shape[1]] for row in range(0, count, shape[1])]
    return values


def valid_tensor(draw) -> dict:
    shape = [draw(st.integers(1, 4)), FEATURES]
    return {"name": INPUT, "shape": shape, "datatype": "FP32", "data": tensor_data(draw, shape)}


def valid_outputs(draw) -> list[dict]:
    outputs = []
    for name in draw(st.lists(st.sampled_from(OUTPUTS), min_size=1, max_size=2, unique=True)):
        output = {"name": name}
        if draw(st.booleans()):
            output["parameters"] = {"binary_data": draw(st.booleans()), "classification": draw(st.integers(0, 12))}
        outputs.append(output)
    return outputs


# What goes wrong with a request: each takes hypothesis' draw and a document, and returns it broken.

def _targets(doc) -> list:
    """The objects of a request where a field can go wrong."""
    found = [doc]
    for key in ("inputs", "outputs"):
        found += [item for item in doc.get(key, []) if isinstance(item, dict)] if isinstance(doc.get(key), list) else []
    found += [item["parameters"] for item in found[1:] if isinstance(item.get("parameters"), dict)]
    return found


def set_field(draw, doc):
    target = draw(st.sampled_from(_targets(doc)))
    key = draw(st.sampled_from(["name", "shape", "datatype", "data", "parameters", "inputs", "outputs", "id",
                                "binary_data_size", "binary_data", "classification", "binary_data_output"])
               | st.text(max_size=8))
    target[key] = draw(json_values | dims)
    return doc


def drop_field(draw, doc):
    target = draw(st.sampled_from(_targets(doc)))
    if target:
        del target[draw(st.sampled_from(sorted(target)))]
    return doc


def reshape(draw, doc):
    """A new shape (often a wrong one) with as many values as it needs, so the shape itself is judged."""
    tensor = doc["inputs"][0]
    tensor["shape"] = draw(shapes)
    tensor["data"] = tensor_data(draw, tensor["shape"])
    return doc


def odd_value(draw, doc):
    data = doc["inputs"][0].get("data")
    if isinstance(data, list) and data:
        row = data[draw(st.integers(0, len(data) - 1))]
        row = row if isinstance(row, list) and row else data
        row[draw(st.integers(0, len(row) - 1))] = draw(scalars | st.lists(numbers, max_size=2))
    return doc


def miscount(draw, doc):
    data = doc["inputs"][0].get("data")
    if isinstance(data, list):
        if data and draw(st.booleans()):
            data.pop()
        else:
            data.append(data[-1] if data else 0.5)
    return doc


def retype(draw, doc):
    doc["inputs"][0]["datatype"] = draw(st.sampled_from(DATATYPES) | st.text(max_size=6))
    return doc


def repeat_input(draw, doc):
    doc["inputs"].append(dict(doc["inputs"][0]))
    return doc


def replace(draw, doc):
    return draw(json_values)


breakages = st.sampled_from([set_field, set_field, drop_field, reshape, reshape, odd_value, miscount, retype,
                             repeat_input, replace])


@st.composite
def infer_documents(draw, tensor: dict | None = None, broken: bool = True):
    """A valid request for the digits model, then (when ``broken``) up to two things broken."""
    doc = {"inputs": [tensor or valid_tensor(draw)]}
    if draw(st.booleans()):
        doc["outputs"] = valid_outputs(draw)
    if draw(st.booleans()):
        doc["id"] = draw(st.text(max_size=20))
    if draw(st.booleans()):
        doc["parameters"] = {"binary_data_output": draw(st.booleans())}
    for breakage in draw(st.lists(breakages, max_size=2)) if broken else []:
        inputs = doc.get("inputs") if isinstance(doc, dict) else None
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
            doc = breakage(draw, doc)
    return doc


header_lengths = st.one_of(
    st.sampled_from(["ten", "-1", " 12", "+12", "1e3", "\u00b2", "0x10", "", "9" * 30, "9" * 5000]),
    st.integers(0, 10**6).map(str),
)


@st.composite
def binary_infer_bodies(draw) -> tuple[bytes, dict[str, str]]:
    """The binary extension: JSON header, raw little-endian tensors, ``Inference-Header-Content-Length``;
    one of them wrong, or none."""
    broken = draw(st.sampled_from(["nothing", "nothing", "values", "size", "length", "tail", "document"]))
    tensor = np.full((draw(batches), FEATURES), draw(st.floats(0, 1, width=32)), dtype="<f4")
    if broken == "values" and tensor.size:
        tensor.flat[draw(st.integers(0, tensor.size - 1))] = draw(
            st.sampled_from([np.nan, np.inf, -np.inf, 3.4e38]) | st.floats(width=32)
        )
    tail = draw(st.binary(max_size=600)) if broken == "tail" else tensor.tobytes()
    size = draw(st.sampled_from([0, len(tail) + 1, len(tail) - 1]) | scalars) if broken == "size" else len(tail)
    tensor = {"name": INPUT, "shape": list(tensor.shape), "datatype": "FP32", "parameters": {"binary_data_size": size}}
    header = to_json(draw(infer_documents(tensor, broken=broken == "document")))
    length = draw(header_lengths) if broken == "length" else str(len(header))
    return header + tail, {"Inference-Header-Content-Length": length}


# -- headers -------------------------------------------------------------------------------

# Printable latin-1 without CR/LF: what http.client lets through, and most of what proxies do.
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40)
content_types = st.one_of(
    st.sampled_from([
        "application/json", "application/json; charset=utf-8", "application/octet-stream", "text/plain",
        "application/x-www-form-urlencoded", "multipart/form-data", "multipart/form-data; boundary=",
        "image/png", "image/jpeg", "image/svg+xml", "image/", "image", "*/*", ";;", "",
    ]),
    header_text,
)
content_encodings = st.sampled_from(["identity", "gzip", "deflate", "br", "", "IDENTITY", "identity, gzip"])
content_encodings |= header_text
# Content-Length and Transfer-Encoding stay out: a lie about the body's length makes nginx wait
# for bytes that never come, which is the client's hang, not the server's.
header_names = st.sampled_from([
    "Accept", "Accept-Encoding", "Authorization", "X-API-Key", "X-Request-ID", "X-Request-Start",
    "X-Forwarded-For", "Inference-Header-Content-Length", "Content-Type", "Content-Encoding", "Cookie",
    "Range", "If-None-Match", "Expect", "Origin", "Host", "User-Agent",
]) | st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True)
random_headers = st.dictionaries(header_names, header_text, max_size=4)


@st.composite
def body_headers(draw, content_type: str | None) -> dict[str, str]:
    """Headers for a body of ``content_type``: usually that, sometimes a random one, plus noise."""
    headers = draw(random_headers)
    headers.pop("Content-Encoding", None)
    kind = draw(st.integers(0, 9))
    if kind < 7 and content_type is not None:
        headers["Content-Type"] = content_type
    elif kind < 9:
        headers["Content-Type"] = draw(content_types)
    else:
        headers.pop("Content-Type", None)
    if draw(st.integers(0, 7)) == 0:
        headers["Content-Encoding"] = draw(content_encodings)
    return headers


# -- images --------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def seed_images() -> list[bytes]:
    """Valid images in every accepted format and the modes those formats carry; mutations start here."""
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (24, 17, 4), dtype=np.uint8), "RGBA")
    frames = [rgba.convert("P"), rgba.rotate(90).convert("P")]
    digit = digit_png(held_out_digits()[0][0])
    return [
        digit,
        _encode(rgba, "PNG"), _encode(rgba.convert("LA"), "PNG"), _encode(rgba.convert("1"), "PNG"),
        _encode(rgba.convert("P"), "PNG", transparency=0), _encode(rgba.convert("I;16"), "PNG"),
        _encode(rgba.convert("RGB"), "JPEG"), _encode(rgba.convert("L"), "JPEG", progressive=True),
        _encode(rgba.convert("CMYK"), "JPEG"), _encode(Image.open(io.BytesIO(digit)), "JPEG", exif=_rotated_exif()),
        _encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        _encode(rgba.convert("RGB"), "BMP"), _encode(rgba.convert("1"), "BMP"), _encode(rgba.convert("P"), "BMP"),
        _encode(rgba, "WEBP", lossless=True), _encode(rgba.convert("RGB"), "WEBP", quality=50),
        _encode(rgba.convert("RGB"), "TIFF", compression="tiff_lzw"),
        _encode(rgba, "TIFF", compression="tiff_adobe_deflate"),
        _encode(rgba.convert("L"), "TIFF", compression="packbits"), _encode(rgba.convert("CMYK"), "TIFF"),
        _encode(rgba.convert("I;16"), "TIFF"), _encode(rgba.convert("F"), "TIFF"), _encode(rgba.convert("1"), "TIFF"),
        _encode(rgba.convert("RGB"), "TIFF", compression="jpeg"), _encode(Image.new("LAB", (9, 7)), "TIFF"),
        _encode(rgba.convert("RGB"), "TIFF", save_all=True, append_images=[rgba.convert("RGB")]),
    ]


def _rotated_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° on display
    return exif


SEEDS = seed_images()
interesting_words = st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00",
                                     b"\x00\x00\x01\x00", b"\xff\xd8", b"\xff\xd9"])


@st.composite
def mutated_images(draw) -> bytes:
    """A valid image, then a few truncations, overwritten words, insertions and deletions."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(["truncate", "byte", "word", "insert", "delete"]))
        if operation == "truncate":
            del data[at:]
        elif operation == "byte" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif operation == "word":
            data[at : at + 4] = draw(interesting_words | st.binary(min_size=4, max_size=4))
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif operation == "delete":
            del data[at : at + draw(st.integers(1, 32))]
    return bytes(data)


image_bodies = st.one_of(mutated_images(), mutated_images(), mutated_images(), st.binary(max_size=300))
image_types = st.one_of(
    st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "image/tiff", "image/svg+xml",
                     "application/octet-stream"]),
    st.from_regex(r"image/[a-z0-9.+-]{0,12}", fullmatch=True),
)
# Fixed, so a failing example replays byte for byte.
BOUNDARY = "modelstack-fuzz-7c1d0b5e"


def multipart(*fields) -> tuple[bytes, str]:
    """``(body, content_type)`` for ``(name, text)`` and ``(name, (filename, data, type))`` fields."""
    return encode_multipart_formdata(list(fields), boundary=BOUNDARY)


# A name ending in a backslash escapes its closing quote: Werkzeug cannot read it.
odd_field_names = st.sampled_from(["files", "image", "File", "", "file[]", "\\", "file\\", 'fi"le'])
odd_field_names |= st.text(max_size=10)
file_counts = st.one_of(st.integers(1, 3), st.integers(1, 3), st.sampled_from([0, MAX_BATCH + 1]))


@st.composite
def multipart_bodies(draw, form_fields: st.SearchStrategy = st.just([]), counts: st.SearchStrategy = file_counts):
    """``multipart/form-data``: ``form_fields`` first (as a browser sends a form), then ``counts`` files
    named ``file``; now and then one under another name, a stray text field, or a body cut short."""
    files = [["file", (draw(st.text(max_size=12)), draw(image_bodies), draw(image_types))] for _ in range(draw(counts))]
    if files and draw(st.integers(0, 4)) == 4:
        files[draw(st.integers(0, len(files) - 1))][0] = draw(odd_field_names)
    if draw(st.integers(0, 5)) == 5:
        files.append([draw(odd_field_names), draw(st.text(max_size=20))])
    body, content_type = multipart(*draw(form_fields), *(tuple(field) for field in draw(st.permutations(files))))
    if draw(st.integers(0, 19)) == 19:  # cut short: the last part never ends
        body = body[: draw(st.integers(0, len(body)))]
    return body, content_type


# -- what fuzzing found: each was a 500 --------------------------------------------------


def _tiff_with_fractional_offsets() -> bytes:
    """A TIFF whose StripOffsets tag is typed RATIONAL: Pillow seeks to a fraction and raises TypeError."""
    data = bytearray(_encode(Image.new("L", (8, 8), 128), "TIFF"))
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(ifd + 2, ifd + 2 + 12 * struct.unpack_from("<H", data, ifd)[0], 12):
        if struct.unpack_from("<H", data, entry)[0] == 273:  # StripOffsets: LONG becomes RATIONAL
            struct.pack_into("<H", data, entry + 2, 5)
    return bytes(data)


FOUND_IMAGES = {
    "fractional-offsets.tif": _tiff_with_fractional_offsets(),
    "lab.tif": _encode(Image.new("LAB", (9, 7)), "TIFF"),  # Pillow converts LAB to RGB only, not to L
    "tall-16-bit.tif": _encode(Image.new("I;16", (2, 5000)), "TIFF"),  # Pillow cannot shrink it that far
}


def found_uploads(*form_fields) -> list[tuple[bytes, str]]:
    """The uploads that were 500s, each after ``form_fields``. In the last, one stray field's name ends
    in a backslash: Werkzeug names it None, which the app sorted with the other's name, a str."""
    uploads = [multipart(*form_fields, ("file", (name, image, "image/tiff"))) for name, image in FOUND_IMAGES.items()]
    digit = ("file", ("digit.png", SEEDS[0], "image/png"))
    return [*uploads, multipart(*form_fields, ("\\", "x"), ("stray", "y"), digit)]


# -- URLs ----------------------------------------------------------------------------------


def encoded(text: str) -> str:
    return quote(text, safe="")


segments = st.one_of(
    st.text(max_size=30).map(encoded),
    st.sampled_from([
        "..", ".", "%2e%2e", "%2E%2E%2F%2E%2E", "%2f", "%00", "%ff", "%", "%zz", "..%2f..%2fetc%2fpasswd", "~root",
        "digits%00", "digits;v=1", "digits%20", "DIGITS", "%64igits", "1", "01", "0", "-1", "%C2%B9", "%EF%BC%91",
        "9" * 5000, "a" * 255, "a" * 4000, "a" * 9000,
    ]),
)
names = st.one_of(st.just(MODEL), st.just(MODEL), segments)
versions = st.one_of(st.just("1"), st.integers(-2, 10**20).map(str), segments)
query_values = st.one_of(st.text(max_size=20).map(encoded), segments, st.integers(-(10**20), 10**20).map(str))


@st.composite
def read_paths(draw) -> str:
    """A GET endpoint with a random model name and version (OIP metadata, readiness, config, stats, pages)."""
    name, version = draw(names), draw(versions)
    model = draw(st.sampled_from([f"/v2/models/{name}", f"/v2/models/{name}/versions/{version}"]))
    return draw(st.sampled_from([
        model, model + "/ready", model + "/config", model + "/stats", "/v2/models/stats",
        f"/models/{name}", f"/models/{name}?version={version}", f"/?model={name}",
        f"/static/{name}", f"/api/v1/models/{name}/predict",
    ]))


# No top_k, a good one, a bad one, or several.
top_k_queries = st.one_of(
    st.just(""),
    st.integers(1, 10).map(lambda k: f"?top_k={k}"),
    st.lists(st.integers(-20, 30).map(str) | query_values, min_size=1, max_size=2).map(
        lambda ks: "?" + "&".join(f"top_k={k}" for k in ks)
    ),
)


methods = st.one_of(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PROPFIND",
                     "MKCOL", "QUERY"]),
    st.from_regex(r"[A-Z_-]{1,12}", fullmatch=True),
)
