"""`convprop serve`: draw a digit and watch its forward and backward pass through every layer, in a browser.

`engine` computes what the page shows with convprop's own layers; `app` serves it (Starlette + uvicorn,
the `serve` extra); `arrays` turns arrays into nested lists or PNG tiles; `static/` is the page.
"""
