"""The REST API (FastAPI). `app.py` builds the app and runs its lifespan; `leads.py`, `segments.py` and `ops.py`
hold the routes by resource; `deps.py` what they depend on, `params.py` what they take, `documents.py` a lead as
they show it, `errors.py` their error bodies, `middleware.py` what every request passes through."""
