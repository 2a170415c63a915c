"""The recommendation service: ``mmkgrec serve RUN_DIR`` (FastAPI + uvicorn).

- :mod:`.service`: :class:`~.service.RecService`, every operation as plain Python;
- :mod:`.engine`: exact scoring, cold-start users and items, user-independent item vectors;
- :mod:`.retrieval`: the faiss index of two-stage retrieval;
- :mod:`.explain`: KG paths and their relation-attention weights;
- :mod:`.store`: durable feedback in SQLite (WAL), export for the next training;
- :mod:`.app`: the HTTP layer and the web page (``static/``); :mod:`.edge`: what every
  request must pass (Host / Origin, body limits) and the server's limits; :mod:`.cli`: the commands.

Nothing heavy is imported here: ``import mmkgrec.serve`` stays cheap; see docs/serving.md.
"""
