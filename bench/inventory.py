"""The standing-privilege inventory of a target with many accounts: how long
``dbaccess-broker inventory`` takes to read and judge them (issue budget: < 5 s a target).

    python bench/inventory.py [--accounts 10000] [--runs 5] [--no-mariadb]

Set-up (not measured): a private PostgreSQL (and MariaDB) server, bootstrapped as a
target, with N login accounts beside the bootstrap's own: every tenth one a member of a
team role that holds the template's group role, every hundredth a superuser (PostgreSQL)
or holder of SUPER (MariaDB), every fiftieth the owner of a table (PostgreSQL) or the
definer of a procedure (MariaDB). Measured: ``Engine.inventory()`` through the definer
routine as the provisioner, plus judging it (``inventory.take``), per run; the median and
the slowest are printed, with the ratio to the 5 s budget.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import median, table  # noqa: E402
from dbaccess.broker.engines import engine_for  # noqa: E402
from dbaccess.broker.inventory import take  # noqa: E402
from dbaccess.broker.settings import load_settings  # noqa: E402
from dbaccess.sandbox.mariadb import MariaDBServer  # noqa: E402
from dbaccess.sandbox.postgres import PostgresServer  # noqa: E402

BUDGET = 5.0
PASSWORD = "bench-inventory-provisioner"


def config(directory: Path, engine: str, port: int) -> Path:
    path = directory / f"{engine}.toml"
    path.write_text(f"""\
[identity]
issuer = "https://idp.invalid"
client_id = "dbaccess-cli"

[targets.inv]
engine = "{engine}"
host = "127.0.0.1"
port = {port}
database = "inv"
{'sslmode = "disable"' if engine == "postgres" else ""}
username_prefix = "iv_"
provisioner = {{ user = "inv_prov", password_file = "provisioner.pw" }}

[targets.inv.roles.readonly]
group_role = "inv_readonly"
""")
    (directory / "provisioner.pw").write_text(PASSWORD + "\n")
    return path


def postgres_accounts(directory: Path, count: int) -> PostgresServer:
    from dbaccess.broker.engines.postgres import bootstrap

    server = PostgresServer(directory / "pg")
    server.start()
    with server.connect() as admin:
        admin.execute("CREATE DATABASE inv")
    settings = load_settings(config(directory, "postgres", server.port))
    with server.connect("inv") as admin:
        bootstrap.apply(settings.targets["inv"], admin, PASSWORD)
        admin.execute("CREATE ROLE inv_team NOLOGIN IN ROLE inv_readonly")
        admin.execute(f"""DO $$ BEGIN FOR i IN 1..{count} LOOP
            EXECUTE format('CREATE ROLE %I LOGIN %s', 'acct_' || i,
                           CASE WHEN i % 100 = 0 THEN 'SUPERUSER' ELSE '' END);
            IF i % 10 = 0 THEN EXECUTE format('GRANT inv_team TO %I', 'acct_' || i); END IF;
            IF i % 50 = 0 THEN
                EXECUTE format('CREATE TABLE public.t_%s (a int)', i);
                EXECUTE format('ALTER TABLE public.t_%s OWNER TO %I', i, 'acct_' || i);
            END IF;
        END LOOP; END $$""")
    return server


def mariadb_accounts(directory: Path, count: int) -> MariaDBServer:
    from dbaccess.broker.engines.mariadb import bootstrap

    server = MariaDBServer(directory / "maria")
    server.start()
    admin = server.connect()
    try:
        with admin.cursor() as cur:
            cur.execute("CREATE DATABASE inv")
            cur.execute("CREATE USER 'inv_prov'@'%%' IDENTIFIED BY %s", (PASSWORD,))
        settings = load_settings(config(directory, "mariadb", server.port))
        for statement in bootstrap.bootstrap_sql(settings.targets["inv"]):
            with admin.cursor() as cur:
                cur.execute(statement)
                cur.fetchall()
        with admin.cursor() as cur:
            cur.execute("CREATE ROLE inv_team")
            cur.execute("GRANT inv_readonly TO inv_team")
            for i in range(1, count + 1):
                cur.execute(f"CREATE USER 'acct_{i}'@'%' IDENTIFIED BY 'x'")
                if i % 10 == 0:
                    cur.execute(f"GRANT inv_team TO 'acct_{i}'@'%'")
                if i % 100 == 0:
                    cur.execute(f"GRANT SUPER ON *.* TO 'acct_{i}'@'%'")
                if i % 50 == 0:
                    cur.execute(f"CREATE DEFINER = 'acct_{i}'@'%' PROCEDURE inv.p_{i}() SELECT 1")
    finally:
        admin.close()
    return server


def measure(path: Path, runs: int) -> tuple[list[float], int]:
    settings = load_settings(path, read_secrets=True)
    engine = engine_for("inv", settings.targets["inv"])
    times, listed = [], 0
    try:
        for _ in range(runs):
            started = time.perf_counter()
            inventory = take(settings, {"inv": engine}, {}, ["inv"])
            times.append(time.perf_counter() - started)
            assert not inventory.errors, inventory.errors
            listed = len(inventory.entries)
    finally:
        engine.close()
    return times, listed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-mariadb", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-inventory-") as tmp:
        directory = Path(tmp)
        pg = postgres_accounts(directory, args.accounts)
        try:
            times, listed = measure(directory / "postgres.toml", args.runs)
            rows.append(("postgres", listed, f"{median(times):.2f}", f"{max(times):.2f}"))
        finally:
            pg.stop()
        if not args.no_mariadb:
            maria = mariadb_accounts(directory, args.accounts)
            try:
                times, listed = measure(directory / "mariadb.toml", args.runs)
                rows.append(("mariadb", listed, f"{median(times):.2f}", f"{max(times):.2f}"))
            finally:
                maria.stop()
    print(f"inventory of one target with {args.accounts} accounts, {args.runs} runs")
    print(table(["engine", "accounts listed", "median s", "slowest s"], rows))
    for engine, _, med, _ in rows:
        print(f"{engine}: median/budget {float(med) / BUDGET:.2f} (budget {BUDGET:g} s)")


if __name__ == "__main__":
    main()
