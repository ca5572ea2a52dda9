"""``coati-tui serve``: the OpenAI-compatible server (the app's side of the process boundary: no torch).

``openai_api`` checks request bodies and builds the response shapes, ``broker`` shares one generation
worker (coati_tui.host.gen_client) among requests, ``app`` is the FastAPI app. The CLI command is in
coati_tui.cli.serve.
"""
