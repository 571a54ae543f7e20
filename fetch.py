"""
fetch.py: getting files from the internet, checked. Not a lesson: data.py and checkpoint.py call it
so that they can stay about data and models.

  * WikiText-2 (Merity et al. 2016): the zip from its author's host, extracted, each split file
    checked against the published line count and, where known, SHA-256 (`wikitext`).
  * GPT-2's weights: Hugging Face's `openai-community/gpt2` pytorch_model.bin (`gpt2_weights`).

Downloads go to `name.part` and are renamed only once complete, so an interrupted download is
never mistaken for a file. Offline, put the files in place yourself: the error says where.

Run:       python data.py        (fetches WikiText-2 into data/wikitext-2 when it is not there)
Read next: data.py.
"""

import hashlib
import http.client
import os
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from runtime import UserError

SPLITS = ("train", "val", "test")
WIKITEXT = {  # the two published variants: their zip and the names of the three split files in it
    "raw": {"zip": "wikitext-2-raw-v1.zip",
            "files": ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw")},
    "v1": {"zip": "wikitext-2-v1.zip",
           "files": ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")},
}
MIRRORS = ("https://wikitext.smerity.com/",)  # the dataset author's own host
LINE_COUNTS = {"train": 36718, "val": 3760, "test": 4358}  # as published, the same in both variants
SHA256 = {  # of the v1 files, as the dataset's zip holds them; the raw ones' are not known here
    "wiki.train.tokens": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
    "wiki.valid.tokens": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "wiki.test.tokens": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
}
GPT2_URL = "https://huggingface.co/openai-community/gpt2/resolve/main/pytorch_model.bin"


class DataError(UserError):
    """Something about the data the user must fix; the message says what and how."""


def wikitext(data_dir, variant="raw", mirrors=MIRRORS, expected=None, download=True,
             copy_from=None):
    """Paths of the train/val/test files of WikiText-2 in data_dir: the split files if they are
    there (either variant), else extracted from a zip that is there, else copied from the folder
    copy_from if it holds them (a second tokenization of the corpus you already have), else from
    a downloaded zip. expected: the line counts and SHA-256s to check against (default: the
    published ones). With download=False, return None instead of copying or downloading."""
    expected = expected or {"lines": LINE_COUNTS, "sha256": SHA256}
    data_dir = Path(data_dir)
    variants = (variant, "v1" if variant == "raw" else "raw")  # the one asked for first
    for v in variants:
        paths = [data_dir / name for name in WIKITEXT[v]["files"]]
        if all(p.exists() for p in paths):
            return check_splits(dict(zip(SPLITS, paths)), expected)
    for v in variants:
        if (data_dir / WIKITEXT[v]["zip"]).exists():
            return extract_splits(data_dir / WIKITEXT[v]["zip"], v, expected)
    if not download:
        return None
    if copy_from and Path(copy_from).resolve() != data_dir.resolve():
        try:
            found = wikitext(copy_from, variant, mirrors, expected, download=False)
        except DataError:  # what is there is not WikiText-2 as published: download it instead
            found = None
        if found:
            print(f"data: WikiText-2 copied from {copy_from}/ to {data_dir}/")
            return {s: Path(shutil.copyfile(p, data_dir / p.name)) for s, p in found.items()}
    zip_path = data_dir / WIKITEXT[variant]["zip"]
    reasons = []
    for mirror in mirrors:
        try:
            download_file(mirror.rstrip("/") + "/" + zip_path.name, zip_path)  # with or without /
            return extract_splits(zip_path, variant, expected)
        except DataError as e:
            zip_path.unlink(missing_ok=True)  # a damaged download must not be found next time
            reasons.append(str(e))
    raise DataError(f"WikiText-2 is not in {data_dir}/ and could not be downloaded "
                    f"({'; '.join(reasons)}). Put {zip_path.name} (or its files "
                    f"{', '.join(WIKITEXT[variant]['files'])}) into {data_dir}/; get it from "
                    f"{MIRRORS[0]}{zip_path.name}")


def download_file(url, dest, timeout=30, retries=3):
    """Fetch url into dest with a progress bar. Bytes go to dest.part, renamed once complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    error = None
    for attempt in range(1, retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as f:
                total = int(response.headers.get("Content-Length", 0)) or None
                with tqdm(total=total, unit="B", unit_scale=True, disable=None,
                          desc=f"downloading {dest.name}") as bar:
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
            if total is not None and part.stat().st_size != total:
                raise OSError(f"got {part.stat().st_size} of {total} bytes")
            os.replace(part, dest)
            return
        except urllib.error.HTTPError as e:  # the server answered: asking again will not help
            error = e
            break
        except (OSError, ValueError, http.client.HTTPException) as e:  # no connection, cut short
            error = e
            if attempt < retries:
                time.sleep(attempt / 2)
    part.unlink(missing_ok=True)
    raise DataError(f"{url}: {error}")


def extract_splits(zip_path, variant, expected):
    """Extract the three split files of `variant` from zip_path into its folder, checked."""
    names = WIKITEXT[variant]["files"]
    try:
        with zipfile.ZipFile(zip_path) as z:
            members = {Path(m).name: m for m in z.namelist()}
            if not all(n in members for n in names):
                raise DataError(f"{zip_path} does not hold {', '.join(names)}: not WikiText-2 "
                                f"({variant})")
            paths = {}
            for split, name in zip(SPLITS, names):
                paths[split] = zip_path.parent / name
                part = paths[split].with_name(name + ".part")
                with z.open(members[name]) as src, open(part, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                os.replace(part, paths[split])
    except (zipfile.BadZipFile, EOFError, OSError) as e:  # a zip cut short or damaged
        for name in names:
            (zip_path.parent / (name + ".part")).unlink(missing_ok=True)
        raise DataError(f"{zip_path} is damaged ({e}); delete it and run again") from None
    try:
        return check_splits(paths, expected)
    except DataError:
        for p in paths.values():
            p.unlink(missing_ok=True)  # a wrong zip leaves no wrong split files behind
        raise


def check_splits(paths, expected):
    """Refuse split files with the wrong number of lines or, where known, the wrong SHA-256."""
    for split, path in paths.items():
        with open(path, "rb") as f:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        if lines != expected["lines"][split]:
            raise DataError(f"{path} has {lines} lines, WikiText-2's {split} split has "
                            f"{expected['lines'][split]}: the file is truncated or not "
                            f"WikiText-2; delete it and run again")
        if path.name in expected["sha256"] and sha256(path) != expected["sha256"][path.name]:
            raise DataError(f"{path} is not the published file (SHA-256 differs); delete it and "
                            f"run again")
    return paths


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gpt2_weights(path):
    """Download GPT-2's pytorch_model.bin (500 MB) to path, unless it is there already."""
    if not str(path).strip() or Path(path).is_dir():
        what = "a folder" if str(path).strip() else "empty"
        raise DataError(f"--gpt2_path {str(path)!r} is {what}: name GPT-2's pytorch_model.bin "
                        f"file (or leave the flag out for its default)")
    path = Path(path)
    if path.exists():
        return
    try:
        download_file(GPT2_URL, path)
    except DataError as e:
        raise DataError(f"GPT-2's weights are not at {path} and could not be downloaded ({e}); "
                        f"put openai-community/gpt2's pytorch_model.bin there or name it with "
                        f"--gpt2_path") from None
