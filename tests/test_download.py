"Downloads of LIMUC (mes_mtl.download) against a fake Zenodo on 127.0.0.1: never the network."
import hashlib, io, json, re, shutil, socket, threading, time, zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from mes_mtl.download import (LIMUC_ARCHIVES, DownloadError, ZenodoUnavailable, check_file, download_file,
                              download_limuc, extract_zip, file_md5, limuc_manual_instructions, zenodo_files)


class RangeHandler(BaseHTTPRequestHandler):
    "Serves `files` (URL path -> bytes) from memory with HTTP Range support; logs (path, Range, bytes sent)."
    files, log, cut_after, ignore_range = {}, [], None, False

    def do_GET(self):
        path, rng = urlsplit(self.path).path, self.headers.get('Range')
        if (data := self.files.get(path)) is None: return self.send_error(404)
        start = int(re.fullmatch(r'bytes=(\d+)-', rng)[1]) if rng and not self.ignore_range else None
        if start is not None and start >= len(data): return self.send_error(416)
        body = data[start or 0:]
        self.send_response(200 if start is None else 206)
        if start is not None: self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        sent = body if self.cut_after is None else body[:self.cut_after]
        self.log.append((path, rng, len(sent)))  # before sending: the client may finish before this thread goes on
        self.wfile.write(sent)
        if self.cut_after is not None: self.close_connection = True

    def log_message(self, *args): pass


def tiny_bmp(k):
    buf = io.BytesIO()
    Image.new('RGB', (8, 8), (60 * k, 40, 40)).save(buf, 'BMP')
    return buf.getvalue()


def tiny_zip(names):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z:
        for name in names: z.writestr(name, tiny_bmp(int(re.search(r'Mayo (\d)', name)[1])))
    return buf.getvalue()


IMAGES = [(1, 0, 1), (1, 1, 2), (2, 0, 1), (2, 2, 2), (3, 3, 1), (3, 1, 2)]  # (patient, MES, n)
ZIPS = {'patient_based_classified_images':  # wrapped in a top folder named like the archive
            tiny_zip(f'patient_based_classified_images/{p}/Mayo {k}/UC_patient_{p}_{n}.bmp' for p, k, n in IMAGES),
        'train_and_validation_sets': tiny_zip(f'Mayo {k}/UC_patient_{p}_{n}.bmp' for p, k, n in IMAGES[:4]),
        'test_set': tiny_zip(f'Mayo {k}/UC_patient_{p}_{n}.bmp' for p, k, n in IMAGES[4:])}
MD5 = {a: hashlib.md5(b).hexdigest() for a, b in ZIPS.items()}
BIG = ZIPS['patient_based_classified_images']


class FakeZenodo:
    "A Range-capable server on 127.0.0.1 with the LIMUC zips and the record's API JSON; stops itself after 30 s."
    def __init__(self):
        record = {'files': [{'key': f'{a}.zip', 'size': len(b), 'checksum': f'md5:{MD5[a]}'} for a, b in ZIPS.items()]}
        files = {f'/files/{a}.zip': b for a, b in ZIPS.items()} | {'/api/records/5827695': json.dumps(record).encode()}
        self.handler = type('Handler', (RangeHandler,), dict(files=files, log=[]))
        self.server = ThreadingHTTPServer(('127.0.0.1', 0), self.handler)
        threading.Thread(target=self.server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()
        self.stopper = threading.Timer(30, self.server.shutdown)
        self.stopper.daemon = True
        self.stopper.start()
        self.host = f'http://127.0.0.1:{self.server.server_port}'
        self.kw = dict(base_url=f'{self.host}/files', api_url=f'{self.host}/api/records/5827695', progress=False)

    def url(self, archive='patient_based_classified_images'): return f'{self.host}/files/{archive}.zip'
    def served(self, archive='patient_based_classified_images'):
        return sum(n for p, _, n in self.handler.log if p == f'/files/{archive}.zip')
    def close(self): self.stopper.cancel(); self.server.shutdown(); self.server.server_close()


@pytest.fixture
def zenodo():
    z = FakeZenodo()
    yield z
    z.close()


def closed_port_url():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return f'http://127.0.0.1:{s.getsockname()[1]}'


# download_file

def test_fresh_download_is_verified_and_renamed(zenodo, tmp_path, capsys):
    out = download_file(zenodo.url(), tmp_path/'a.zip', md5=MD5['patient_based_classified_images'], size=len(BIG), chunk=300)
    assert out == tmp_path/'a.zip' and out.read_bytes() == BIG
    assert not (tmp_path/'a.zip.part').exists()
    assert zenodo.handler.log == [('/files/patient_based_classified_images.zip', None, len(BIG))]
    zenodo.handler.log.clear()
    assert download_file(zenodo.url(), out, md5=MD5['patient_based_classified_images'], size=len(BIG)) == out
    assert zenodo.handler.log == []  # already there and verified: no request


def test_dropped_connection_keeps_part_and_resumes(zenodo, tmp_path):
    zenodo.handler.cut_after = 1000
    with pytest.raises(DownloadError, match=r'stopped at 1,000 of .*call again to resume'):
        download_file(zenodo.url(), tmp_path/'a.zip', md5=MD5['patient_based_classified_images'], size=len(BIG),
                      chunk=256, progress=False)
    assert (tmp_path/'a.zip.part').stat().st_size == 1000 and not (tmp_path/'a.zip').exists()
    zenodo.handler.cut_after = None
    zenodo.handler.log.clear()
    download_file(zenodo.url(), tmp_path/'a.zip', md5=MD5['patient_based_classified_images'], size=len(BIG), progress=False)
    assert zenodo.handler.log == [('/files/patient_based_classified_images.zip', 'bytes=1000-', len(BIG) - 1000)]
    assert (tmp_path/'a.zip').read_bytes() == BIG


@pytest.mark.parametrize('have, size, ignore_range, served', [
    (700, len(BIG), False, len(BIG) - 700),  # resumed from the offset
    (700, None, False, len(BIG) - 700),      # size unknown: Content-Length says when it is complete
    (700, len(BIG), True, len(BIG)),         # server ignores Range: restarted from scratch
    (len(BIG), len(BIG), False, 0),          # .part already complete: only verified
    (len(BIG) + 5, len(BIG), False, len(BIG)),  # .part longer than the file: restarted
    (len(BIG) + 5, None, False, len(BIG)),   # the same with unknown size: the server's 416 restarts it
])
def test_resume_from_part(zenodo, tmp_path, have, size, ignore_range, served):
    (tmp_path/'a.zip.part').write_bytes((BIG + b'extra')[:have])
    zenodo.handler.ignore_range = ignore_range
    out = download_file(zenodo.url(), tmp_path/'a.zip', md5=MD5['patient_based_classified_images'], size=size, progress=False)
    assert out.read_bytes() == BIG
    assert zenodo.served() == served


def test_corrupt_download_is_deleted(zenodo, tmp_path):
    zenodo.handler.files['/files/bad.zip'] = BIG[:-1] + b'!'
    for md5, size, msg in [(MD5['patient_based_classified_images'], len(BIG), 'has md5'), (None, len(BIG) + 1, 'expected')]:
        with pytest.raises(DownloadError, match=msg) as e:
            download_file(f'{zenodo.host}/files/bad.zip', tmp_path/'bad.zip', md5=md5, size=size, progress=False)
        assert 'corrupt and was deleted' in str(e.value)
        assert list(tmp_path.iterdir()) == []


def test_existing_file_that_fails_verification_is_kept_and_reported(zenodo, tmp_path):
    (tmp_path/'a.zip').write_bytes(b'not the file')
    with pytest.raises(DownloadError, match='delete it to download'):
        download_file(zenodo.url(), tmp_path/'a.zip', size=len(BIG), progress=False)
    assert (tmp_path/'a.zip').read_bytes() == b'not the file' and zenodo.handler.log == []


def test_http_errors_propagate(zenodo, tmp_path):
    with pytest.raises(Exception, match='404'): download_file(f'{zenodo.host}/files/none.zip', tmp_path/'x', progress=False)


def test_check_file_and_md5(tmp_path):
    p = tmp_path/'f'
    p.write_bytes(b'abc')
    assert file_md5(p, chunk=1) == hashlib.md5(b'abc').hexdigest()
    assert check_file(p, hashlib.md5(b'abc').hexdigest().upper(), 3) == p
    with pytest.raises(DownloadError, match='3 bytes, expected 4'): check_file(p, size=4)


# Zenodo API

def test_zenodo_files_reads_api_and_export_formats(zenodo):
    files = zenodo_files(zenodo.kw['api_url'])
    assert files['test_set.zip'] == {'size': len(ZIPS['test_set']), 'md5': MD5['test_set']}
    assert set(files) == {f'{a}.zip' for a in LIMUC_ARCHIVES}
    entries = {'x.zip': {'key': 'x.zip', 'size': 3, 'checksum': 'md5:abc'}, 'y.zip': {'key': 'y.zip', 'checksum': 'sha1:f'}}
    zenodo.handler.files['/export'] = json.dumps({'files': {'entries': entries}}).encode()
    assert zenodo_files(f'{zenodo.host}/export') == {'x.zip': {'size': 3, 'md5': 'abc'}, 'y.zip': {'size': None, 'md5': None}}


# extraction

def test_extract_zip_unwraps_top_folder_and_skips_done(tmp_path):
    (tmp_path/'p.zip').write_bytes(BIG)
    out = extract_zip(tmp_path/'p.zip', tmp_path/'d', 'patient_based_classified_images', progress=False)
    assert out == tmp_path/'d'/'patient_based_classified_images'
    assert sorted(str(p.relative_to(out)) for p in out.rglob('*.bmp')) == sorted(
        f'{p}/Mayo {k}/UC_patient_{p}_{n}.bmp' for p, k, n in IMAGES)
    (tmp_path/'t.zip').write_bytes(ZIPS['test_set'])
    out = extract_zip(tmp_path/'t.zip', tmp_path/'d')  # no wrapper folder, name from the zip, with a bar
    assert sorted(p.name for p in out.iterdir()) == ['Mayo 1', 'Mayo 3']
    (out/'Mayo 1'/'UC_patient_3_2.bmp').unlink()
    assert extract_zip(tmp_path/'t.zip', tmp_path/'d', progress=False) == out
    assert not (out/'Mayo 1'/'UC_patient_3_2.bmp').exists()  # done before: left alone
    assert sorted(p.name for p in (tmp_path/'d').iterdir()) == ['patient_based_classified_images', 't']


def test_extract_zip_rejects_damaged_archives(tmp_path):
    data = ZIPS['test_set']
    i = data.index(b'BM') + 100  # a byte of the first bitmap's pixels (the zip stores them uncompressed)
    (tmp_path/'crc.zip').write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    (tmp_path/'cut.zip').write_bytes(data[:300])
    for name, msg in [('crc', 'CRC'), ('cut', 'not a zip file')]:
        with pytest.raises(DownloadError, match=f'not a valid zip archive .*{msg}'):
            extract_zip(tmp_path/f'{name}.zip', tmp_path/'d', progress=False)
        assert not (tmp_path/'d'/name).exists() and not (tmp_path/'d'/f'.{name}.partial').exists()


# download_limuc

def test_download_limuc_end_to_end_and_idempotent(zenodo, tmp_path):
    dest = download_limuc(tmp_path/'limuc', **zenodo.kw)
    assert sorted(p.name for p in dest.iterdir()) == sorted(LIMUC_ARCHIVES)  # no zip, .part or staging left
    assert len(list(dest.rglob('*.bmp'))) == 2 * len(IMAGES)
    assert (dest/'patient_based_classified_images'/'2'/'Mayo 2'/'UC_patient_2_2.bmp').read_bytes() == tiny_bmp(2)
    assert (dest/'test_set'/'Mayo 3'/'UC_patient_3_1.bmp').exists()
    zenodo.handler.log.clear()
    assert download_limuc(dest, **zenodo.kw) == dest
    assert zenodo.handler.log == []  # nothing to do: not even the API is asked


def test_download_limuc_keeps_zips_and_redoes_interrupted_extraction(zenodo, tmp_path):
    download_limuc(tmp_path, archives='test_set', keep_zips=True, **zenodo.kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['test_set', 'test_set.zip']
    shutil.rmtree(tmp_path/'test_set')
    (tmp_path/'.test_set.partial'/'Mayo 0').mkdir(parents=True)  # left by an interrupted extraction
    zenodo.handler.log.clear()
    download_limuc(tmp_path, archives=['test_set'], **zenodo.kw)
    assert zenodo.handler.log == []  # the kept zip is used
    assert sorted(p.name for p in tmp_path.iterdir()) == ['test_set']
    assert sorted(p.name for p in (tmp_path/'test_set').iterdir()) == ['Mayo 1', 'Mayo 3']


def test_download_limuc_resumes_a_partial_archive(zenodo, tmp_path):
    (tmp_path/'test_set.zip.part').write_bytes(ZIPS['test_set'][:500])
    download_limuc(tmp_path, archives=['test_set'], **zenodo.kw)
    assert ('/files/test_set.zip', 'bytes=500-', len(ZIPS['test_set']) - 500) in zenodo.handler.log
    assert (tmp_path/'test_set'/'Mayo 1'/'UC_patient_3_2.bmp').exists()


def test_download_limuc_offline_fails_fast_with_manual_instructions(tmp_path):
    closed = closed_port_url()
    (tmp_path/'test_set').mkdir()  # already there: not in the instructions
    t0 = time.time()
    with pytest.raises(ZenodoUnavailable) as e:
        download_limuc(tmp_path, base_url=f'{closed}/files', api_url=f'{closed}/api', timeout=2, progress=False)
    assert time.time() - t0 < 15  # no retries: refused at once (the bound is loose for busy CI machines)
    msg = str(e.value)
    for s in ['Connection refused', f'{closed}/files/patient_based_classified_images.zip?download=1',
              f'{closed}/files/train_and_validation_sets.zip?download=1',
              f'{tmp_path}/patient_based_classified_images/<patient_id>/Mayo <k>/', 'limuc_items', 'CC BY 4.0']:
        assert s in msg, s
    assert 'test_set.zip' not in msg
    assert isinstance(e.value, DownloadError) and isinstance(e.value, RuntimeError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['test_set']


def test_download_limuc_offline_with_manual_zip(tmp_path):
    closed = closed_port_url()
    (tmp_path/'train_and_validation_sets.zip').write_bytes(ZIPS['train_and_validation_sets'])
    download_limuc(tmp_path, archives=['train_and_validation_sets'], base_url=f'{closed}/files', api_url=f'{closed}/api',
                   progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['train_and_validation_sets']
    assert len(list((tmp_path/'train_and_validation_sets').rglob('*.bmp'))) == 4


def test_download_limuc_bad_arguments_and_records(zenodo, tmp_path):
    with pytest.raises(ValueError, match=r"\['test'\]; choose from"): download_limuc(tmp_path, archives=['test'])
    zenodo.handler.files['/api/records/5827695'] = json.dumps({'files': []}).encode()
    with pytest.raises(DownloadError, match=r"does not list \['test_set.zip'\]"):
        download_limuc(tmp_path, archives=['test_set'], **zenodo.kw)


def test_manual_instructions_name_urls_and_layout():
    msg = limuc_manual_instructions('data/limuc', ['test_set'])
    assert 'https://zenodo.org/records/5827695/files/test_set.zip?download=1' in msg
    assert 'data/limuc/test_set/Mayo <k>/UC_patient_<patient_id>_<n>.bmp' in msg
    assert 'patient_based' not in msg
