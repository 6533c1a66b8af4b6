def test_stack_serves_the_default_model(stack, digits):
    from .digits import digit_png

    image, label = digits[0]
    response = stack.post("/api/v1/models/digits/predict", files={"file": ("d.png", digit_png(image))})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == str(label)
