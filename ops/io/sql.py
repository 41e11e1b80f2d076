"""DuckDB over output roots, offline: ``connect()`` gives a connection with DuckDB's delta and httpfs extensions
loaded from their Python packages (duckdb-ext-delta, duckdb-ext-httpfs: what the test extra installs), never
downloaded, and S3 set up from the same environment crossmatch reads (keys, endpoint, region). ``committed`` is the
SQL of a table's committed rows: a row counts when its (run_id, attempt) is in ``runs``.

    from ops.io.sql import committed, connect
    con = connect()
    con.sql(f"SELECT uri, face_index, score FROM ({committed('out/results', 'faces')}) LIMIT 5").show()
"""

from __future__ import annotations

import os
from pathlib import Path

from ops.io.errors import JobFailed

EXTENSIONS = ("httpfs", "delta")


def connect():
    """A DuckDB connection that reads Delta tables, local or on S3, without the network beyond the store itself."""
    try:
        import duckdb
        import duckdb_ext
    except ImportError as exc:
        raise JobFailed(
            f"{exc.name} is not installed: `pip install -e '.[test]'` brings DuckDB and its delta and httpfs "
            "extensions as packages"
        ) from None
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    (platform,) = con.execute("PRAGMA platform").fetchone()
    folder = Path(list(duckdb_ext.__path__)[0]) / "extensions" / f"v{duckdb.__version__}" / platform
    for name in EXTENSIONS:
        path = folder / f"{name}.duckdb_extension"
        if not path.exists():
            raise JobFailed(
                f"no {name} extension for DuckDB {duckdb.__version__} on {platform} at {path}: install the "
                f"duckdb-ext-{name} release that matches DuckDB {duckdb.__version__}"
            )
        con.execute(f"LOAD '{path}'")
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        con.execute(_s3_secret())
    return con


def _s3_secret() -> str:
    env = os.environ
    parts = [f"KEY_ID '{env['AWS_ACCESS_KEY_ID']}'", f"SECRET '{env.get('AWS_SECRET_ACCESS_KEY', '')}'"]
    if env.get("AWS_SESSION_TOKEN"):
        parts.append(f"SESSION_TOKEN '{env['AWS_SESSION_TOKEN']}'")
    parts.append(f"REGION '{env.get('AWS_REGION') or env.get('AWS_DEFAULT_REGION') or 'us-east-1'}'")
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:  # a MinIO, Ceph or test server: path-style URLs, HTTP when the endpoint says so
        host = endpoint.split("://", 1)[-1].rstrip("/")
        parts += [f"ENDPOINT '{host}'", "URL_STYLE 'path'", f"USE_SSL {str(endpoint.startswith('https')).lower()}"]
    return f"CREATE OR REPLACE SECRET crossmatch (TYPE s3, {', '.join(parts)})"


def committed(root: str, table: str) -> str:
    """SQL for the committed rows of ``table`` under the output root ``root`` (a folder or s3://bucket/prefix)."""
    top = root.rstrip("/")
    if "://" not in top:
        top = str(Path(top).resolve())
    return f"SELECT t.* FROM delta_scan('{top}/{table}') t SEMI JOIN delta_scan('{top}/runs') r USING (run_id, attempt)"
