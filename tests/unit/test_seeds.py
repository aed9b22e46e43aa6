"""Seed tokens: derived from a private key and a per-instance nonce; the store keeps only their digests."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import column, insert, table
from sqlalchemy.exc import IntegrityError, StatementError

from engine.db import Database
from engine.models import Instance
from engine.seeds import SeedTokens
from engine.settings import Settings


def test_a_token_is_derived_again_from_the_key_and_the_stored_nonce(tmp_path: Path):
    seeds = SeedTokens.from_file(tmp_path / "state" / "seed.key")
    stored = seeds.new(100001)
    instance = Instance(id=100001, **stored)
    token = seeds.token(instance)
    assert len(token) == 43 and token not in str(stored)  # 256 bits, URL-safe; not in what is stored
    assert SeedTokens.digest(token) == stored["seed_token_hash"]
    assert SeedTokens.from_file(tmp_path / "state" / "seed.key").token(instance) == token  # the same after a restart
    assert stat.S_IMODE((tmp_path / "state" / "seed.key").stat().st_mode) == 0o600


def test_tokens_differ_per_instance_per_nonce_and_per_key():
    seeds, other = SeedTokens(b"a" * 32), SeedTokens(b"b" * 32)
    one, two = Instance(id=1, seed_nonce="n"), Instance(id=2, seed_nonce="n")
    assert len({seeds.token(one), seeds.token(two), seeds.token(Instance(id=1, seed_nonce="m")), other.token(one)}) == 4


def test_an_instance_stored_by_an_older_release_keeps_its_clear_token():
    assert SeedTokens(b"a" * 32).token(Instance(id=1, seed_token="legacy-token-value")) == "legacy-token-value"


def test_a_short_key_is_refused():
    with pytest.raises(ValueError, match="at least 32 bytes"):
        SeedTokens(b"short")


def test_the_upgrade_keeps_the_tokens_of_instances_stored_before_digests(empty_database_url: str):
    database = Database(empty_database_url)
    config = Config()
    config.set_main_option("script_location", str(database.migrations))
    columns = ("id", "name", "vm_name", "image_id", "flavour_id", "node", "cores", "memory_mb", "disk_gb", "lifecycle")
    columns += ("meta", "security_groups", "ssh_keys", "seed_token", "adopted", "created_at", "updated_at")
    instances = table("instances", *(column(name) for name in columns))
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
        legacy = (100001, "n", "n", "9000", "small", "pve1", 1, 512, 4, "provisioned", "{}", "[]", "[]")
        legacy += ("legacy-token-value", False, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
        connection.execute(insert(instances).values(dict(zip(columns, legacy, strict=True))))
    database.migrate()
    with database.session() as session:
        instance = session.get_one(Instance, 100001)
        assert instance.seed_token_hash == SeedTokens.digest("legacy-token-value")
        assert SeedTokens(b"a" * 32).token(instance) == "legacy-token-value"
    database.dispose()


def test_the_state_directory_and_database_files_are_private(tmp_path: Path):
    state = tmp_path / "state"
    database = Database(f"sqlite:///{state / 'provisioner.db'}")
    database.migrate()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("provisioner.db", "provisioner.db-wal", "provisioner.db-shm"):
        if (state / name).exists():
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    database.dispose()


def test_every_configured_secret_is_redacted():
    settings = Settings(  # type: ignore[call-arg]
        auth_token="visa-token-0123456789",
        operator_token="operator-token-0123456789",
        proxmox_password="pw",
        database_url="postgresql+psycopg://provisioner:db-password@db/provisioner",
    )
    assert sorted(settings.secret_values()) == sorted(
        ["visa-token-0123456789", "operator-token-0123456789", "pw", "db-password"]
    )


def test_statement_parameters_never_reach_errors_or_logs(database_url: str):
    database = Database(database_url)
    database.migrate()
    flavours = table("flavours", *(column(name) for name in ("id", "name", "cpus", "ram_mb", "disk_gb")))
    with pytest.raises(StatementError) as raised, database.session() as session:
        session.execute(insert(flavours).values(id="seed-token-value"))  # no name: PostgreSQL names the row
    assert "seed-token-value" not in str(raised.value)
    with database.session() as session:
        session.execute(insert(flavours).values(id="seed-token-value", name="n", cpus=1, ram_mb=16, disk_gb=1))
    with pytest.raises(IntegrityError) as raised, database.session() as session:  # PostgreSQL: "Key (id)=(...) exists"
        session.execute(insert(flavours).values(id="seed-token-value", name="n", cpus=1, ram_mb=16, disk_gb=1))
    assert "seed-token-value" not in str(raised.value)
    database.dispose()
