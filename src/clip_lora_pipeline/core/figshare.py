"""The files of a public figshare record, listed through figshare's API (v2).

A figshare record's download URLs are per file id, not per name, so a source cannot
hard-code them; the API lists each file's name, download URL and the md5 figshare
computed, which ``core.download`` then fetches and checks. No library wraps this one
read-only call (figshare's own Python clients are generated for the whole API and
want a token), so it is a plain GET.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from clip_lora_pipeline.core.download import _USER_AGENT, DownloadError, RemoteFile

API = "https://api.figshare.com/v2"
# The API's largest page: one request lists any dataset record.
_PAGE_SIZE = 1000
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


def files_url(article_id: int, api: str = API) -> str:
    return f"{api}/articles/{article_id}/files?page_size={_PAGE_SIZE}"


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _remote(entry: Any, url: str) -> RemoteFile:
    if not isinstance(entry, dict) or not entry.get("name") or not entry.get("download_url"):
        raise DownloadError(f"{url}: expected files with 'name' and 'download_url', got {entry!r}.")
    md5 = entry.get("computed_md5") or entry.get("supplied_md5") or None
    name = str(entry["name"])
    return RemoteFile(str(entry["download_url"]), name, name, md5=md5, extract=is_archive(name))


def article_files(article_id: int, timeout: float = 30.0, api: str = API) -> list[RemoteFile]:
    """Every file of the public record ``article_id``: archives are marked to be
    unpacked, and each carries figshare's md5 where it has one."""
    url = files_url(article_id, api)
    request = urllib.request.Request(
        url, headers={"User-Agent": _USER_AGENT, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            listing = json.loads(response.read())
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"Could not list the files of figshare record {article_id} "
                            f"({url}): {reason}.") from exc
    except ValueError as exc:  # not JSON: a proxy's or an error page
        raise DownloadError(f"{url} did not answer with JSON: {exc}.") from exc
    if not isinstance(listing, list):
        raise DownloadError(f"{url}: expected a list of files, got {type(listing).__name__}.")
    return [_remote(entry, url) for entry in listing]
