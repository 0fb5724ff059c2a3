"""The download's record (download.DownloadRecord): the `.json` beside a raw file, written and read
through one dataclass. Any record written reads back as it was; records of earlier versions read
(their keys are this version's); a file that is no record fails naming the file and why."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.download import DownloadRecord, RecordUnreadable

text = st.text(st.characters(codec="utf-8"), max_size=40)
records = st.builds(
    DownloadRecord,
    url=text,
    size=st.integers(min_value=0, max_value=2**53),
    sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
    etag=text,
    last_modified=text,
    header=text,
)


@given(records)
def test_any_record_written_reads_back_as_it_was(tmp_path_factory, record):
    path = str(tmp_path_factory.mktemp("record") / "file.csv.gz.json")

    record.write(path)

    assert DownloadRecord.read(path) == record
    with open(path) as f:  # the file keeps the keys earlier versions wrote and read
        assert json.load(f) == {
            "url": record.url,
            "size": record.size,
            "sha256": record.sha256,
            "etag": record.etag,
            "last_modified": record.last_modified,
            "header": record.header,
        }


def test_a_record_of_the_first_version_without_validators_reads(tmp_path):
    path = tmp_path / "yellow_tripdata_2021-01.csv.gz.json"
    path.write_text(json.dumps({"url": "https://example/y.csv.gz", "size": 12, "sha256": "ab" * 32, "header": "VendorID,x"}))

    record = DownloadRecord.read(str(path))

    assert record == DownloadRecord(url="https://example/y.csv.gz", size=12, sha256="ab" * 32, header="VendorID,x")
    assert record.etag == "" and record.last_modified == ""


def test_a_key_this_version_does_not_know_is_left_out(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"url": "u", "size": 1, "sha256": "s", "header": "h", "written_by": "a later version"}))

    assert DownloadRecord.read(str(path)) == DownloadRecord(url="u", size=1, sha256="s", header="h")


@pytest.mark.parametrize(
    "content, why",
    [
        ('{"url": "u", "size": 1', "not JSON"),
        ("[1, 2]", "not a JSON object but list"),
        ('{"url": "u", "header": "h"}', "it lacks size, sha256"),
    ],
)
def test_a_file_that_is_no_record_fails_naming_the_file_and_why(tmp_path, content, why):
    path = tmp_path / "green_tripdata_2019-01.csv.gz.json"
    path.write_text(content)

    with pytest.raises(RecordUnreadable) as raised:
        DownloadRecord.read(str(path))

    assert raised.value.path == str(path) and raised.value.why.startswith(why)
    assert str(raised.value).startswith(f"{path}: not a download record ({why}")
