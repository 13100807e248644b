"""Migrations: applied once, in order, recorded with a checksum; an edited applied file is refused."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from common.migrate import Migration, MigrationError, apply_migrations, load_migrations
from tests.helpers import scratch_database


@pytest.fixture
async def scratch_db(settings):
    async with scratch_database(settings.database_url) as url:
        conn = await asyncpg.connect(url)
        yield conn
        await conn.close()


async def test_migrations_apply_once_and_are_recorded(scratch_db):
    first = await apply_migrations(scratch_db)
    again = await apply_migrations(scratch_db)

    assert first == [m.name for m in load_migrations()]
    assert again == []
    recorded = await scratch_db.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["checksum"]) for r in recorded] == [(m.version, m.checksum) for m in load_migrations()]
    assert await scratch_db.fetchval("SELECT to_regclass('generations') IS NOT NULL")


async def test_an_applied_migration_that_changed_is_refused(scratch_db):
    original = load_migrations()
    await apply_migrations(scratch_db, original)
    edited = [Migration(original[0].version, original[0].name, original[0].sql + "\n-- edited\n"), *original[1:]]

    with pytest.raises(MigrationError, match="changed after it was applied"):
        await apply_migrations(scratch_db, edited)


async def test_output_urls_written_before_become_object_keys(scratch_db):
    """Rows stored when the database kept public URLs: the keys are what answers presign now."""
    before, after = [], []
    for migration in load_migrations():
        (before if migration.version < 10 else after).append(migration)
    await apply_migrations(scratch_db, before)
    gid, other = uuid.uuid4(), uuid.uuid4()
    urls = [f"https://cdn.example.com/b/generations/{gid}.png", f"http://127.0.0.1:9000/b/generations/{gid}-1.webp"]
    insert = """
        INSERT INTO generations (id, user_id, model, prompt, status, output_url, output_urls, completed_at)
        VALUES ($1, 'u', 'm', 'p', $2, $3, $4, CASE WHEN $2 = 'queued' THEN NULL ELSE now() END)
    """
    await scratch_db.execute(insert, gid, "succeeded", urls[0], urls)
    await scratch_db.execute(insert, other, "queued", None, [])

    await apply_migrations(scratch_db, before + after)

    rows = {r["id"]: r for r in await scratch_db.fetch("SELECT id, output_key, output_keys FROM generations")}
    assert rows[gid]["output_key"] == f"generations/{gid}.png"
    assert list(rows[gid]["output_keys"]) == [f"generations/{gid}.png", f"generations/{gid}-1.webp"]
    assert rows[other]["output_key"] is None and list(rows[other]["output_keys"]) == []
