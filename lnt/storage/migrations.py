"""
The ledger's schema, as numbered migrations that the daemon applies at start.

A database records its version in C{schema_version}; L{migrate} applies every later migration,
each in its own transaction, so a crash between two leaves a database at a clean earlier
version. A database newer than this code is refused (an older daemon must not write to it).
Several daemons starting at once against one PostgreSQL database serialise on an advisory lock.

Never edit a migration that has shipped: add the next one. Column types written C{{bigint}},
C{{bytes}}, C{{serial}} are filled in per engine (see L{lnt.storage.database.Engine}).
Timestamps are integer milliseconds since the epoch (UTC); money is integer fen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from lnt.logmask import Logger
from lnt.storage.database import DSN, Cursor, DBConnection, Engine, run_transaction

log = Logger()

#: a migration is SQL (with the engine's column types filled in) or, where the databases need
#: different statements, a function of the engine giving them
Script = str | Callable[[Engine], list[str]]

MIGRATIONS: Sequence[tuple[int, Script]] = (
    (
        1,
        """
        CREATE TABLE pki_cards (
            pki_no {bigint} PRIMARY KEY,
            user_id TEXT NOT NULL,
            public_key {bytes} NOT NULL,
            key_version INTEGER NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
            last_counter {bigint} NOT NULL DEFAULT 0,
            created_ms {bigint} NOT NULL,
            revoked_ms {bigint}
        );
        CREATE TABLE card_randoms (
            pki_no {bigint} NOT NULL REFERENCES pki_cards (pki_no),
            card_random {bytes} NOT NULL,
            at_ms {bigint} NOT NULL,
            PRIMARY KEY (pki_no, card_random)
        );
        CREATE TABLE handshake_serials (
            serial {serial},
            pki_no {bigint} NOT NULL REFERENCES pki_cards (pki_no),
            created_ms {bigint} NOT NULL
        );
        CREATE TABLE sessions (
            pki_no {bigint} PRIMARY KEY REFERENCES pki_cards (pki_no),
            user_id TEXT NOT NULL,
            serial TEXT NOT NULL UNIQUE,
            session_key {bytes} NOT NULL,
            created_ms {bigint} NOT NULL,
            expires_ms {bigint} NOT NULL
        );
        CREATE TABLE signins (
            id {serial},
            pki_no {bigint},
            user_id TEXT NOT NULL,
            outcome TEXT NOT NULL,
            at_ms {bigint} NOT NULL
        );
        CREATE INDEX signins_pki ON signins (pki_no, at_ms);
        """,
    ),
    (
        2,
        """
        CREATE TABLE platforms (
            platform_no INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            active INTEGER NOT NULL DEFAULT 1
        );
        CREATE TABLE payments (
            platform_no INTEGER NOT NULL REFERENCES platforms (platform_no),
            biz_serial_no TEXT NOT NULL,
            money {bigint} NOT NULL CHECK (money > 0),
            user_id TEXT NOT NULL,
            pki_no {bigint} NOT NULL,
            fingerprint TEXT NOT NULL,
            created_ms {bigint} NOT NULL,
            PRIMARY KEY (platform_no, biz_serial_no)
        );
        CREATE TABLE order_numbers (
            seq {serial},
            created_ms {bigint} NOT NULL
        );
        CREATE TABLE orders (
            order_no TEXT PRIMARY KEY,
            platform_no INTEGER NOT NULL,
            biz_serial_no TEXT NOT NULL,
            pki_no {bigint} NOT NULL,
            card_kind TEXT NOT NULL CHECK (card_kind IN ('cpu', 'm1')),
            logical_no TEXT NOT NULL,
            physical_no TEXT NOT NULL,
            amount {bigint} NOT NULL CHECK (amount > 0),
            state TEXT NOT NULL,
            created_ms {bigint} NOT NULL,
            updated_ms {bigint} NOT NULL,
            UNIQUE (platform_no, biz_serial_no),
            FOREIGN KEY (platform_no, biz_serial_no)
                REFERENCES payments (platform_no, biz_serial_no)
        );
        CREATE INDEX orders_card ON orders (logical_no, created_ms);
        CREATE TABLE journal_entries (
            id {serial},
            kind TEXT NOT NULL,
            reference TEXT NOT NULL,
            at_ms {bigint} NOT NULL
        );
        CREATE TABLE postings (
            entry_id {bigint} NOT NULL REFERENCES journal_entries (id),
            account TEXT NOT NULL,
            amount {bigint} NOT NULL
        );
        CREATE INDEX postings_account ON postings (account);
        CREATE INDEX postings_entry ON postings (entry_id);
        """,
    ),
    (
        3,
        """
        ALTER TABLE sessions ADD COLUMN sm_seq {bigint} NOT NULL DEFAULT 0;
        ALTER TABLE pki_cards ADD COLUMN last_deposit_seq {bigint} NOT NULL DEFAULT 0;
        CREATE TABLE loads (
            order_no TEXT PRIMARY KEY REFERENCES orders (order_no),
            pki_no {bigint} NOT NULL,
            card_kind TEXT NOT NULL,
            logical_no TEXT NOT NULL,
            physical_no TEXT NOT NULL,
            amount {bigint} NOT NULL,
            old_balance {bigint} NOT NULL,
            online_serial INTEGER,
            terminal_id TEXT NOT NULL,
            load_time TEXT NOT NULL,
            key_version INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'loaded', 'reversed')),
            tac TEXT,
            new_balance {bigint},
            created_ms {bigint} NOT NULL,
            updated_ms {bigint} NOT NULL
        );
        CREATE INDEX loads_state ON loads (state);
        CREATE TABLE deposits (
            id {serial},
            logical_no TEXT NOT NULL,
            physical_no TEXT NOT NULL,
            op INTEGER NOT NULL,
            flag INTEGER NOT NULL,
            pki_no {bigint} NOT NULL,
            at_ms {bigint} NOT NULL
        );
        CREATE INDEX deposits_card ON deposits (logical_no, id);
        """,
    ),
    (
        4,
        """
        CREATE TABLE merchants (
            customer_id TEXT PRIMARY KEY,
            aes_key {bytes} NOT NULL,
            md5_key {bytes} NOT NULL,
            active INTEGER NOT NULL DEFAULT 1,
            created_ms {bigint} NOT NULL
        );
        CREATE TABLE merchant_rates (
            customer_id TEXT NOT NULL REFERENCES merchants (customer_id),
            product_code TEXT NOT NULL,
            rate_bp INTEGER NOT NULL CHECK (rate_bp BETWEEN 0 AND 10000),
            PRIMARY KEY (customer_id, product_code)
        );
        CREATE TABLE vouchers (
            card_id TEXT PRIMARY KEY,
            masked TEXT NOT NULL,
            salt {bytes} NOT NULL,
            password_hash {bytes} NOT NULL,
            face_value {bigint} NOT NULL CHECK (face_value > 0),
            product_code TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('issued', 'redeemed')),
            redeemed_ref TEXT UNIQUE,
            created_ms {bigint} NOT NULL,
            redeemed_ms {bigint}
        );
        CREATE TABLE consignments (
            system_order_id TEXT PRIMARY KEY,
            customer_id TEXT NOT NULL REFERENCES merchants (customer_id),
            order_id TEXT NOT NULL,
            batchno TEXT NOT NULL,
            product_code TEXT NOT NULL,
            amount {bigint} NOT NULL,
            notify_url TEXT NOT NULL,
            custom TEXT NOT NULL,
            card_masked TEXT NOT NULL,
            secrets {bytes},
            state TEXT NOT NULL CHECK (state IN ('processing', 'success', 'failed')),
            message TEXT NOT NULL,
            success_amount {bigint},
            actual_amount {bigint},
            success_ms {bigint},
            created_ms {bigint} NOT NULL,
            UNIQUE (customer_id, order_id)
        );
        CREATE INDEX consignments_batch ON consignments (customer_id, batchno);
        CREATE INDEX consignments_state ON consignments (state);
        CREATE TABLE notifications (
            id {serial},
            reference TEXT NOT NULL,
            url TEXT NOT NULL,
            body TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_ms {bigint} NOT NULL,
            created_ms {bigint} NOT NULL
        );
        CREATE INDEX notifications_due ON notifications (state, next_ms);
        CREATE TABLE notify_attempts (
            notification_id {bigint} NOT NULL REFERENCES notifications (id),
            at_ms {bigint} NOT NULL,
            outcome TEXT NOT NULL
        );
        INSERT INTO platforms (platform_no, name, active) VALUES (0, 'consignment merchants', 1);
        """,
    ),
    (
        5,
        """
        CREATE TABLE topups (
            order_no TEXT PRIMARY KEY REFERENCES orders (order_no),
            customer_id TEXT NOT NULL REFERENCES merchants (customer_id),
            order_id TEXT NOT NULL,
            notify_url TEXT NOT NULL,
            custom TEXT NOT NULL,
            UNIQUE (customer_id, order_id)
        );
        """,
    ),
    (
        6,
        """
        ALTER TABLE loads ADD COLUMN hold_until_ms {bigint} NOT NULL DEFAULT 0;
        """,
    ),
    (
        7,
        """
        CREATE TABLE cards (
            logical_no TEXT PRIMARY KEY,
            card_kind TEXT NOT NULL CHECK (card_kind IN ('cpu', 'm1')),
            physical_no TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('active', 'closed')),
            created_ms {bigint} NOT NULL,
            updated_ms {bigint} NOT NULL
        );
        ALTER TABLE payments ADD COLUMN refusal TEXT NOT NULL DEFAULT '';
        ALTER TABLE payments ADD COLUMN refused_ms {bigint};
        ALTER TABLE payments ADD COLUMN refunded_ms {bigint};
        CREATE INDEX loads_card_state ON loads (logical_no, state);
        CREATE TABLE decisions (
            id {serial},
            kind TEXT NOT NULL,
            reference TEXT NOT NULL,
            decision TEXT NOT NULL,
            reason TEXT NOT NULL,
            operator TEXT NOT NULL,
            at_ms {bigint} NOT NULL
        );
        CREATE INDEX decisions_ref ON decisions (kind, reference);
        """,
    ),
    (
        8,
        # the order states in SQL too (the orders table of migration 2 had no CHECK)
        lambda engine: engine.add_check("orders", "state",
                                        ("created", "pending", "loaded", "reversed")),
    ),
    (
        9,
        """
        CREATE TABLE health (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            probe_ms {bigint} NOT NULL,
            key_check {bytes} NOT NULL
        );
        """,
    ),
)

#: The version this code writes.
LATEST = MIGRATIONS[-1][0]


class SchemaTooNew(Exception):
    """The database was migrated by a newer version of the daemon."""


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def current_version(cur: Cursor) -> int:
    cur.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
    )
    row = cur.execute("SELECT version FROM schema_version").fetchone()
    return 0 if row is None else int(row[0])


def _lock(cur: Cursor) -> None:
    if cur.engine.name == "postgres":
        # One migrating daemon at a time; released at commit.
        cur.execute("SELECT pg_advisory_xact_lock(7243001)")


def _locked_version(cur: Cursor) -> int:
    _lock(cur)
    return current_version(cur)


def _apply(cur: Cursor, version: int, script: Script) -> bool:
    _lock(cur)
    if current_version(cur) >= version:
        return False  # another daemon got there first
    statements = script(cur.engine) if callable(script) else _statements(
        cur.engine.schema(script))
    for statement in statements:
        cur.execute(statement)
    cur.execute("DELETE FROM schema_version")
    cur.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
    return True


def ledger_in_use(dsn: DSN) -> bool:
    """Whether the ledger exists already with a schema (SQLite: without creating the file)."""
    if dsn.engine.name == "sqlite":
        path = Path(dsn.target)
        if not path.exists() or path.stat().st_size == 0:
            return False
    conn = dsn.connect()
    try:
        return run_transaction(dsn.engine, conn, "schema version", current_version) > 0
    finally:
        conn.close()


def migrate(
    dsn: DSN,
    migrations: Sequence[tuple[int, Script]] = MIGRATIONS,
    conn: DBConnection | None = None,
) -> int:
    """
    Bring the database to the newest version; returns it. Synchronous: the daemon calls it
    before the reactor starts, the admin CLI before it touches anything.
    """
    own = conn is None
    conn = conn or dsn.connect()
    try:
        latest = migrations[-1][0]
        found = run_transaction(dsn.engine, conn, "schema version", _locked_version)
        if found > latest:
            raise SchemaTooNew(
                f"ledger schema is version {found}, this daemon knows up to {latest}: "
                "run the newer daemon"
            )
        for version, script in migrations:
            if version > found and run_transaction(
                dsn.engine, conn, f"migration {version}", _apply, version, script
            ):
                log.info("ledger migrated to schema version {version}", version=version)
        return latest
    finally:
        if own:
            conn.close()
