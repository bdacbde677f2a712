"""`crew serve`: a thin Starlette API over the repository the CLI writes.

Nothing here imports crew.cli; Starlette and uvicorn are imported only by the server, so
`crew --help` never pays for them. Build the app with `crew.api.app.create_app`.
"""
