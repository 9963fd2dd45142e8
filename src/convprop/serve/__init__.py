"""`convprop serve`: draw a digit and watch its forward and backward pass through every layer, in a browser.

`inputs` checks what a request carries; `engine` computes what the page shows with convprop's own layers,
under one lock; `trainer` trains the model in a background thread; `app` holds the Starlette routes;
`server` is the command (uvicorn on a bound socket; Starlette + uvicorn are the `serve` extra); `arrays`
turns arrays into nested lists or PNG tiles; `static/` is the page, as ES modules.
"""
