"""Masking of personal data (toolchain/core/privacy.py): exact outputs on real headlines with personal data put
in, checksum-failing look-alikes and finance figures left alone, the real test sets left unchanged, the
service's error messages and logs masked (admission control in process, and a real server).

The headlines are from the Financial PhraseBank (allagree test split) and the Twitter financial news
topic test set; the personal data put in them uses reserved or published test values (555-01xx and
Ofcom drama numbers, the card networks' test numbers, the banks' example IBANs).
"""
from __future__ import annotations

import asyncio
import json
import logging
import textwrap

import httpx
import pytest

from conftest import DATA_ROOT, REPO
from test_serve_support import built  # noqa: F401  (the fixture of the real-server test)
from toolchain.core.privacy import MaskingFilter, clip, find, install_log_masking, mask
from toolchain.serve.classify import ROUTE, TASK, parse_request, predicted_labels
from toolchain.serve.admission import AdmissionControl, Route
from toolchain.serve.settings import ServeSettings
from toolchain.serve.validation import preview

SATAMA = ("Satama 's net profit for the third quarter of 2007 rose to 275,000 euro ( $ 395,000 ) from 270,000 euro "
          "( $ 388,000 ) for the same period of 2006 .")
ALMA = ("The share capital of Alma Media Corporation (business ID 1944757-4)is EUR 45,031,513.80 and it is divided "
        "into 75,052,523 shares .")
GOLDMAN = ("Goldman Sachs: The economy 'is going to slow a lot' — but there is one big upside  "
           "https://t.co/JbETDmGjxi by @BrianSozzi  https://t.co/eH5GhLgyn3")
CFG = "$CFG - Citizens Financial stock gains after loan growth, rate hikes, dividend boost  https://t.co/YTyPec1B7z"
COMPONENTA = ("Finnish metal products company Componenta Oyj ( HEL : CTH1V ) said today its net loss narrowed to "
              "EUR 500,000 ( USD 680,000 ) in the last quarter of 2010 from EUR 5.3 million for the same period a "
              "year earlier .")

MASKED = [
    (f"{SATAMA} Contact investor.relations@satama.fi or +358 9 2311 4567 .",
     f"{SATAMA} Contact [EMAIL] or [PHONE] ."),
    (f"{GOLDMAN} Tips to brian.sozzi+tips@yahoo-inc.example.com",
     f"{GOLDMAN} Tips to [EMAIL]"),
    (f"{CFG} Questions: call (212) 555-0187 or 020 7946 0958, or +44 20 7946 0958.",
     f"{CFG} Questions: call [PHONE] or [PHONE], or [PHONE]."),
    (f"{ALMA} Dividends are paid to IBAN FI21 1234 5600 0007 85 , or GB82 WEST 1234 5698 7654 32 .",
     f"{ALMA} Dividends are paid to IBAN [IBAN] , or [IBAN] ."),
    (f"{COMPONENTA} Refunds to NL91ABNA0417164300.", f"{COMPONENTA} Refunds to [IBAN]."),
    ("Department store sales improved by 14 % to EUR 1,070.6 mn . Paid with 4111 1111 1111 1111, 5555-5555-5555-4444, "
     "Amex 3782 822463 10005 and 6011111111111117 .",
     "Department store sales improved by 14 % to EUR 1,070.6 mn . Paid with [CARD], [CARD], Amex [CARD] and [CARD] ."),
    ("EBIT margin was up from 1.4 % to 5.1 % . Wire to account no. 12345678 , sort code 20-00-00 , routing number "
     "021000021 , acct #0012-3456-78 , a/c: 987654321 .",
     "EBIT margin was up from 1.4 % to 5.1 % . Wire to account no. [ACCOUNT] , sort code [ACCOUNT] , routing number "
     "[ACCOUNT] , acct #[ACCOUNT] , a/c: [ACCOUNT] ."),
    ("Kone 's net sales rose by some 14 % year-on-year in the first nine months of 2008 . Send to 12-3456-7890123-00 .",
     "Kone 's net sales rose by some 14 % year-on-year in the first nine months of 2008 . Send to [ACCOUNT] ."),
    ("Paid in 2004 4111 1111 1111 1111 ; ref 4111 1111 1111 1111 2 .",   # a card among other digits: the card
     "Paid in 2004 [CARD] ; ref [CARD] 2 ."),
    ("Paid in 2010 4111 1111 1111 1111 .",   # 2010 4111 1111 1111 passes the checks too: the union is masked
     "Paid in [CARD] ."),
]


@pytest.mark.parametrize("text, expected", MASKED, ids=[str(i) for i in range(len(MASKED))])
def test_personal_data_in_real_headlines_is_masked_and_nothing_else_changes(text, expected):
    assert mask(text) == expected
    spans = find(text)   # outside the spans, the text is byte for byte the original
    pieces, at = [], 0
    for span in spans:
        pieces += [text[at:span.start], f"[{span.kind}]"]
        at = span.end
    assert "".join(pieces) + text[at:] == expected
    assert mask(expected) == expected   # masking twice changes nothing more


KEPT = [
    "Paid with 4111 1111 1111 1112 and 4111111111111112 .",            # Luhn check fails
    "Paid with 1234 5678 9012 3452 .",                                  # Luhn passes, but no card starts with 1
    "IBAN FI21 1234 5600 0007 86 and GB82WEST12345698765431 .",         # mod-97 check fails
    "DE89 3704 0044 0532 0130 01 EUR",                                  # fails; its digits pass Luhn, still no card
    "ISIN FI0009000681 and US0378331005 , ticker CTH1V , $AAPL $SPY",
    "EUR 131 million , 2,000,000 shares , 10 000 000 euros , 1 000 000 000 000 yen , EUR 45,031,513.80",
    "in 2019-2020 , on 2024-05-01 at 10:30 , January-June 2010 , up 34.2 % , FY23 EPS , Q3 2022",
    "The deal accounts for 12345678 shares ; the account grew by 12 % ; account ending 4321",
    "business ID 1944757-4 , former inmate 62785-054 , order 2022 2023 2024 2025",
    "https://t.co/4155550123 https://twitter.com/x/status/1581234567890123456 www.example.com/2125550187",
    "Earnings per share for January-June 2010 were EUR0 .30 , an increase of 20 % year-on-year EUR0 .25 .",
    "RT @Reuters: @BrianSozzi says rates rise",
]


@pytest.mark.parametrize("text", KEPT)
def test_checksum_failures_finance_figures_and_urls_are_left_alone(text):
    assert mask(text) == text


def test_real_test_sets_are_unchanged_unless_they_hold_personal_data():
    """Every text of the topic test set (4,117 tweets) and the PhraseBank allagree test split (240 sentences):
    none holds personal data (read through), so masking must change none, URLs and figures included."""
    files = [DATA_ROOT / "twitter_financial_news_topic" / "test.jsonl",
             DATA_ROOT / "financial_phrasebank" / "splits" / "allagree" / "test.jsonl"]
    if not all(f.is_file() for f in files):
        pytest.skip(f"real data not found under {DATA_ROOT} (set TOOLCHAIN_DATA_DIR)")
    texts = [json.loads(line)["text"] for f in files for line in f.read_text(encoding="utf-8").splitlines()]
    assert len(texts) == 4117 + 240
    changed = [(text, mask(text)) for text in texts if mask(text) != text]
    assert changed == []


def test_clip_never_leaves_a_piece_of_personal_data_in_the_clear():
    text = "Refunds: write to jane.doe@example.org or call +44 20 7946 0958 today about the EUR 131 million"
    for width in range(1, len(text)):
        clipped = mask(clip(text, width))
        assert len(clip(text, width)) <= width
        for secret in ("jane", "doe@", "example.org", "7946", "0958"):
            assert secret not in clipped, (width, clipped)
    assert preview(text) == "'Refunds: write to jane.doe@example.org ..."


def test_long_values_are_masked_in_bounded_time():
    import time

    started = time.perf_counter()
    for text in ("1 " * 2500, "a@" * 2500, "9" * 5000, "account " * 600 + "1", "DE89 " * 1000):
        assert len(mask(text)) <= len(text) + 10
    assert time.perf_counter() - started < 5


# --------------------------------------------------------------------------- the service

def logged(caplog, logger: logging.Logger, *args, **kwargs) -> str:
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.error(*args, **kwargs)
    return caplog.text


def test_masking_filter_masks_messages_arguments_and_tracebacks(caplog):
    logger = logging.getLogger("toolchain.test.masking")
    install_log_masking(logger)
    install_log_masking(logger)   # once only
    assert sum(isinstance(f, MaskingFilter) for f in logger.filters) == 1
    try:
        raise ValueError("cannot read 'refund to jane.doe@example.org, card 4111 1111 1111 1111'")
    except ValueError:
        text = logged(caplog, logger, "request %s from %s failed", "texts[0]", "+44 20 7946 0958", exc_info=True)
    assert "request texts[0] from [PHONE] failed" in text
    assert "ValueError: cannot read 'refund to [EMAIL], card [CARD]'" in text
    assert "jane.doe" not in text and "4111" not in text and "7946" not in text


def call_admission(admission: AdmissionControl, body: bytes) -> tuple[int, dict]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": ROUTE, "headers": [(b"content-type", b"application/json")]}
    asyncio.run(admission(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


async def failing_app(scope, receive, send):
    raise RuntimeError("the model could not read 'Refund jane.doe@example.org'")


@pytest.mark.parametrize("mask_pii", [True, False])
def test_admission_error_messages_quote_requests_masked_unless_turned_off(mask_pii):
    admission = AdmissionControl(failing_app, {ROUTE: Route(TASK, parse_request, predicted_labels)},
                                 ServeSettings(auth=False, mask_pii=mask_pii))
    requests = [b'{"texts": "Refund to jane.doe@example.org please"}',
                b'{"texts": ["ok"], "jane.doe@example.org": 1}',
                b'{"texts": ["ok"], "topic": ["jane.doe@example.org"]}']
    for body in requests:
        status, answer = call_admission(admission, body)
        assert status == 422
        assert ("[EMAIL]" in answer["message"]) is mask_pii
        assert ("jane.doe@example.org" in answer["message"]) is not mask_pii


def test_admission_exception_log_is_masked_once_the_service_installs_the_filter(caplog):
    logger = logging.getLogger("toolchain.serve")
    install_log_masking(logger)   # what toolchain/serve/service.py does with TOOLCHAIN_MASK_PII=true
    admission = AdmissionControl(failing_app, {ROUTE: Route(TASK, parse_request, predicted_labels)},
                                 ServeSettings(auth=False))
    with caplog.at_level(logging.ERROR, logger="toolchain.serve"):
        status, answer = call_admission(admission, b'{"texts": ["Refund jane.doe@example.org"]}')
    assert status == 500 and "admission control failed" in caplog.text
    assert "could not read 'Refund [EMAIL]'" in caplog.text and "jane.doe" not in caplog.text


def test_mask_setting_defaults_on_and_reads_its_variable():
    from toolchain.serve.settings import load_settings

    assert load_settings({}).mask_pii is True
    assert load_settings({"TOOLCHAIN_MASK_PII": "false"}).mask_pii is False


def test_service_requirements_carry_the_masking_libraries_at_the_tested_floors():
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    served = (REPO / "toolchain" / "serve" / "requirements" / "cpu.txt").read_text().splitlines()
    for name in ("python-stdnum", "phonenumbers"):
        floor = next(line for line in declared if line.startswith(name + ">="))
        assert floor in served, f"{floor} is in pyproject.toml but not in the service's requirements"


FAULTY_SERVICE = '''
"""Test only: the real service; a text starting "FAULT " makes the model raise with the text in the message."""
from toolchain.inference import runtime
from toolchain.serve.service import ToolchainService  # noqa: F401  (what bentoml serves)

_infer = runtime.OnnxModel.infer


def infer(self, texts):
    for text in texts:
        if text.startswith("FAULT "):
            raise RuntimeError(f"cannot classify {text!r}")
    return _infer(self, texts)


runtime.OnnxModel.infer = infer
'''


@pytest.mark.server
def test_real_server_logs_and_errors_hold_no_e_mail_address(built, tmp_path):
    import os

    from test_serve_support import PLAIN_KEY, Server, toolchain_env, write_keys

    (tmp_path / "faulty_service.py").write_text(textwrap.dedent(FAULTY_SERVICE))
    env = toolchain_env(built.home, TOOLCHAIN_EXPORT_DIR=str(built.export_dir), TOOLCHAIN_VARIANT="fp32",
                        TOOLCHAIN_API_KEYS_FILE=str(write_keys(tmp_path / "keys")), TOOLCHAIN_WORKERS="1",
                        TOOLCHAIN_THREADS="1")
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    server = Server("faulty_service:ToolchainService", env, tmp_path / "server.log").wait_ready()
    headers = {"Authorization": f"Bearer {PLAIN_KEY}"}
    try:
        refused = httpx.post(server.url + ROUTE, json={"texts": "Refund to jane.doe@example.org"}, headers=headers)
        failed = httpx.post(server.url + ROUTE, json={"texts": ["FAULT refund to jane.doe@example.org"]},
                            headers=headers, timeout=30)
        served = httpx.post(server.url + ROUTE, json={"texts": ["Mail jane.doe@example.org: profit rose"]},
                            headers=headers, timeout=30)
    finally:
        server.stop()
    log = server.output()
    assert refused.status_code == 422 and "[EMAIL]" in refused.json()["message"]
    assert failed.status_code == 500 and served.status_code == 200
    assert "cannot classify 'FAULT refund to [EMAIL]'" in log   # BentoML's exception log, masked
    assert "jane.doe" not in log and "jane.doe" not in refused.text + failed.text


@pytest.mark.parametrize("pad", range(40, 62, 3))
def test_a_bad_line_quotes_no_piece_of_an_address_it_cuts(pad):
    """The feeder's bad-line reasons quote at most 60 characters; wherever the cut falls, masking the reason
    leaves no piece of the e-mail address in the clear."""
    from toolchain.monitor.inputs import BadLine, parse_line

    raw = ("x" * pad + " write to jane.doe@example.org now").encode() + b"\n"  # not JSON
    record = parse_line(raw, "f", 1, len(raw))
    assert isinstance(record, BadLine)
    masked = mask(record.reason)
    assert "jane" not in masked and "example" not in masked and "doe@" not in masked
