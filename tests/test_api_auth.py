"""Authentication and isolation: every JWT failure mode is a 401; `userId` must be the token's `sub` (403);
another user's generation and a malformed id are 404s indistinguishable from an unknown id."""

from __future__ import annotations

import asyncio
import time
import uuid
import warnings

import jwt
import jwt.warnings
import pytest

from services.api.auth import MAX_REMEMBERED_TOKEN, Verified, VerifiedTokens
from tests.helpers import JWT_SECRET, bearer

OTHER_SECRET = "another-secret-of-at-least-32-bytes-xx"
NOW = int(time.time())


def _hs(claims: dict, key: str = JWT_SECRET, alg: str = "HS256") -> str:
    with warnings.catch_warnings():  # PyJWT warns that our test key is short for HS512: that is the point
        warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
        return jwt.encode(claims, key, algorithm=alg)


def _tampered() -> str:
    header, _, signature = _hs({"sub": "alice", "exp": NOW + 600}).split(".")
    forged = jwt.utils.base64url_encode(b'{"sub":"mallory","exp":9999999999}').decode()
    return f"{header}.{forged}.{signature}"


BAD_AUTHORIZATION = {
    "missing": None,
    "basic scheme": "Basic dXNlcjpwYXNz",
    "empty bearer": "Bearer",
    "malformed": "Bearer not-a-jwt",
    "three garbage parts": "Bearer a.b.c",
    "expired": f"Bearer {_hs({'sub': 'alice', 'exp': NOW - 60})}",
    "wrong key": f"Bearer {_hs({'sub': 'alice', 'exp': NOW + 600}, OTHER_SECRET)}",
    "alg none": f"Bearer {jwt.encode({'sub': 'alice', 'exp': NOW + 600}, None, algorithm='none')}",
    "HS512 with the right key": f"Bearer {_hs({'sub': 'alice', 'exp': NOW + 600}, alg='HS512')}",
    "tampered payload": f"Bearer {_tampered()}",
    "no sub": f"Bearer {_hs({'exp': NOW + 600})}",
    "no exp": f"Bearer {_hs({'sub': 'alice'})}",
    "empty sub": f"Bearer {_hs({'sub': '', 'exp': NOW + 600})}",
    "blank sub": f"Bearer {_hs({'sub': '   ', 'exp': NOW + 600})}",
    "numeric sub": f"Bearer {_hs({'sub': 42, 'exp': NOW + 600})}",
    # Longer than any index on user ids is meant to hold (a very long one reached PostgreSQL's row limit).
    "sub over 255 bytes": f"Bearer {_hs({'sub': 'é' * 128, 'exp': NOW + 600})}",
    "exp not a number": f"Bearer {_hs({'sub': 'alice', 'exp': 'tomorrow'})}",
}

ENDPOINTS = [
    ("POST", "/api/generate"),
    ("GET", f"/api/predictions/{uuid.uuid4()}"),
    ("POST", f"/api/predictions/{uuid.uuid4()}/cancel"),
    ("GET", "/api/generations"),
]


@pytest.mark.parametrize("method,path", ENDPOINTS, ids=[p for _, p in ENDPOINTS])
async def test_every_bad_token_is_a_401(http, urls, method, path):
    for case, authorization in BAD_AUTHORIZATION.items():
        headers = {} if authorization is None else {"Authorization": authorization}
        response = await http.request(method, f"{urls.api}{path}", headers=headers, json={"prompt": "a cat"})
        assert response.status_code == 401, (case, response.text)
        assert set(response.json()) == {"error"}, case
        assert response.headers["WWW-Authenticate"] == "Bearer", case


async def test_userid_other_than_sub_is_403_and_equal_is_accepted(http, urls, auth, user_id):
    other = await http.post(f"{urls.api}/api/generate", json={"prompt": "x", "userId": "someone-else"}, headers=auth)
    same = await http.post(f"{urls.api}/api/generate", json={"prompt": "a fox", "userId": user_id}, headers=auth)

    assert other.status_code == 403 and set(other.json()) == {"error"}
    assert same.status_code == 201, same.text


async def test_other_users_and_malformed_ids_look_unknown(http, urls, auth):
    created = await http.post(f"{urls.api}/api/generate", json={"prompt": "mine only"}, headers=auth)
    assert created.status_code == 201
    mine = created.json()["id"]
    intruder = bearer(f"intruder-{uuid.uuid4().hex}")

    answers = []
    for method, suffix in (("GET", ""), ("POST", "/cancel")):
        for headers, ident in (
            (intruder, mine),  # someone else's generation
            (auth, str(uuid.uuid4())),  # unknown
            (auth, "not-a-uuid"),  # malformed
            (auth, mine.replace("-", "")),  # another spelling of a real id
        ):
            response = await http.request(method, f"{urls.api}/api/predictions/{ident}{suffix}", headers=headers)
            answers.append((response.status_code, response.json(), response.headers["Content-Type"]))
    assert answers == [(404, {"error": "Not found"}, "application/json; charset=utf-8")] * len(answers)
    own = await http.get(f"{urls.api}/api/predictions/{mine}", headers=auth)
    assert own.status_code == 200 and own.json()["id"] == mine


async def test_a_remembered_token_is_refused_once_it_expires(http, urls, user_id):
    """A verified token is answered from memory afterwards, but only until its `exp`."""
    expires = int(time.time()) + 2
    headers = {"Authorization": f"Bearer {_hs({'sub': user_id, 'exp': expires})}"}
    for _ in range(2):  # the second one is answered from memory
        assert (await http.get(f"{urls.api}/api/generations", headers=headers)).status_code == 200
    await asyncio.sleep(max(0.0, expires - time.time()) + 0.2)
    late = await http.get(f"{urls.api}/api/generations", headers=headers)
    assert late.status_code == 401 and late.json() == {"error": "Token expired"}


def test_remembered_tokens_are_bounded_and_the_oldest_go_first():
    tokens = VerifiedTokens(size=3)
    for n in range(5):
        tokens.add(f"token-{n}", Verified(f"user-{n}", 0, "HS256", None, JWT_SECRET))
    tokens.add("x" * (MAX_REMEMBERED_TOKEN + 1), Verified("huge", 0, "HS256", None, JWT_SECRET))
    assert len(tokens) == 3
    assert [tokens.get(f"token-{n}") is not None for n in range(5)] == [False, False, True, True, True]
