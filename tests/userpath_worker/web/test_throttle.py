"""Sign-in throttling through the pages (issue 20, reproductions 4 and 7): every failure is counted
before the next password is checked, on SQLite and PostgreSQL, and nobody's guesses lock the owner
out of a correct password."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from flask import Flask

from tests.common.web import OWNER, PASSWORD, Browser, People
from userpath_worker.accounts import services as accounts

ATTACKER = "203.0.113.66"
SHARED = "198.51.100.10"  # a proxy or an office that many people sign in through
WRONG = "not the password at all"


def new_browser(app: Flask, address: str = "127.0.0.1") -> Browser:
    return Browser(app.test_client()).from_address(address)


def test_parallel_wrong_passwords_for_one_e_mail_are_each_counted_before_the_next_check(
    app: Flask, people: People
) -> None:
    """Reproduction 7: 60 parallel wrong guesses for one e-mail (16 at once): 19 were checked
    against a limit of 5 on PostgreSQL; on SQLite 14 of 40 answered 500 (database is locked)."""
    people.organization()
    guessers = [new_browser(app, ATTACKER) for _ in range(60)]
    tokens = [guesser.csrf_token() for guesser in guessers]

    def guess(number: int) -> int:
        form = {"email": OWNER, "password": f"{WRONG} {number}", "csrf_token": tokens[number]}
        return guessers[number].post("/sign-in", form).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(guess, range(len(guessers))))
    assert sorted(set(statuses)) == [401, 429], statuses  # no 500
    assert statuses.count(401) == accounts.MAX_FAILURES  # checked; the rest refused unchecked
    # The owner, elsewhere, is not locked out by it.
    assert new_browser(app).sign_in(OWNER, PASSWORD).status_code == 302


def test_a_flood_of_failures_from_one_address_does_not_lock_the_owner_out(app: Flask, people: People) -> None:
    """Reproduction 4: 20 failures with made-up e-mails from one address, and the owner with the
    right password got 429; behind a proxy without --trusted-proxy everyone has that address."""
    people.organization()
    attacker = new_browser(app, SHARED)
    for number in range(50):
        attacker.post("/sign-in", {"email": f"guess{number}@example.com", "password": WRONG})
    assert new_browser(app, SHARED).sign_in(OWNER, PASSWORD).status_code == 302


def test_guesses_at_the_owner_s_e_mail_from_one_address_do_not_lock_the_owner_out(app: Flask, people: People) -> None:
    """5 failures locked any known owner's account, from anywhere."""
    people.organization()
    known = new_browser(app, SHARED)
    known.sign_in(OWNER, PASSWORD)
    known.post("/sign-out")
    attacker = new_browser(app, SHARED)
    statuses = [attacker.post("/sign-in", {"email": OWNER, "password": WRONG}).status_code for _ in range(30)]
    assert statuses == [401] * accounts.MAX_FAILURES + [429] * (30 - accounts.MAX_FAILURES)
    # The owner: from another address in a new browser, and from the same one in the browser that
    # signed in before.
    assert new_browser(app, "192.0.2.8").sign_in(OWNER, PASSWORD).status_code == 302
    assert known.sign_in(OWNER, PASSWORD).status_code == 302
    # The attacker's address stays refused for that e-mail, right password or not.
    assert attacker.post("/sign-in", {"email": OWNER, "password": PASSWORD}).status_code == 429
