#!/usr/bin/python3
"""psycopg2 cells of pgverifyproxy's client compatibility matrix.

Usage (Debian's python3-psycopg2, so the system interpreter):

    /usr/bin/python3 matrix.py QUERY NAME DSN [NAME DSN ...]

For each NAME DSN pair it connects with psycopg2.connect(DSN) (a libpq
connection string), runs QUERY, which must return one text value, and
prints one line, fields separated by tabs:

    NAME  ok     VALUE  tls=true|false
    NAME  error  MESSAGE

where tls tells whether the client's own leg used TLS (libpq's
ssl_in_use) and MESSAGE is what psycopg2 raised, newlines replaced by
" / ". The exit status is 0 when every line was printed (whatever the
outcomes), 2 on a usage error. pgverifyproxy's integration tests
(integration/matrix_test.go) run it through the proxy.
"""

import sys

import psycopg2


def one_line(text):
    """Returns text on a single line."""
    return " / ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def run_cell(query, dsn):
    """Connects with dsn, runs query and returns the fields after NAME."""
    try:
        conn = psycopg2.connect(dsn)
    except psycopg2.Error as e:
        return ["error", one_line(e)]
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            value = cur.fetchone()[0]
        tls = "true" if conn.info.ssl_in_use else "false"
        return ["ok", str(value), "tls=" + tls]
    except psycopg2.Error as e:
        return ["error", one_line(e)]
    finally:
        conn.close()


def main(argv):
    if len(argv) < 4 or len(argv) % 2 != 0:
        print("usage: matrix.py QUERY NAME DSN [NAME DSN ...]", file=sys.stderr)
        return 2
    query = argv[1]
    for i in range(2, len(argv), 2):
        name, dsn = argv[i], argv[i + 1]
        print("\t".join([name] + run_cell(query, dsn)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
