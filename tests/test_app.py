"""`mes_mtl app` in a real browser: the command serves the page, headless Chromium (Selenium) uploads a demo image, an
image the model is unsure of and the demo video, and reads the scores, the Grad-CAM overlays and the second-opinion
flag the page shows. Screenshots go to the test's temporary folder; MES_MTL_APP_SCREENSHOT=FILE also saves the
scored video's there (the one in nbs/app_video.png was made so)."""
import importlib.util, os, shutil, socket, subprocess, sys, time
import pytest

HOW = ("pip install 'mes_mtl[app]' selenium (the extra and the browser driver's client), and the browser: "
       "apt-get install -y chromium chromium-driver")
BROWSER = next(filter(None, map(shutil.which, ('chromium', 'chromium-browser', 'google-chrome'))), None)  # GitHub's: Chrome
DRIVER = shutil.which('chromedriver')
missing = [m for m in ('gradio', 'selenium', 'av') if importlib.util.find_spec(m) is None]
missing += [] if BROWSER and DRIVER else ['chromium and chromedriver']
if missing: pytest.skip(f"the browser test needs {', '.join(missing)}: {HOW}", allow_module_level=True)

import json
from pathlib import Path
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from mes_mtl.app import demo_examples, fit_second_opinion, SEGMENTS_SHOWN
from mes_mtl.data import limuc_items
from mes_mtl.demo import demo_limuc
from mes_mtl.demo_model import demo_model
from mes_mtl.inference import MESPredictor
from mes_mtl.splits import split_items

WAIT = 60  # s, for the server to start and for an answer to show (a few seconds here)


@pytest.fixture(scope='module')
def validation():
    "The demo model's validation images (fold 0 of its split: see `demo_model`), as `read_items` gives them."
    split = split_items(limuc_items(demo_limuc(400, 40, progress=False)), test_size=0.1, n_folds=5, seed=0)
    return split[~split.is_test & (split.fold == 0)]


@pytest.fixture(scope='module')
def server(validation, tmp_path_factory):
    "`mes_mtl app --model DEMO --calib-data VALIDATION --port P` in a subprocess: its URL, until the module ends."
    table = tmp_path_factory.mktemp('calib')/'validation.csv'
    validation[['path', 'mes', 'patient']].to_csv(table, index=False)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    demo_examples()  # made once beforehand, as the page's examples
    cmd = [sys.executable, '-c', 'import sys; from mes_mtl.cli import main; sys.exit(main())', 'app', '--model',
           str(demo_model()), '--calib-data', str(table), '--port', str(port), '--device', 'cpu']
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        start = time.monotonic()
        while True:
            if proc.poll() is not None: pytest.fail(f"mes_mtl app stopped: {proc.communicate()}")
            try:
                with socket.create_connection(('127.0.0.1', port), timeout=1): break
            except OSError:
                if time.monotonic() - start > WAIT: pytest.fail(f"mes_mtl app did not serve in {WAIT} s")
                time.sleep(0.2)
        yield f'http://127.0.0.1:{port}'
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.fixture(scope='module')
def browser():
    "Headless Chromium of the system (no browser is downloaded)."
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--window-size=1200,1400'):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def _upload(driver, box: str, files):
    "Give `files` to the file input of the component `box` and wait until the page lists them."
    field = WebDriverWait(driver, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#{box} input[type=file]'))
    field[0].send_keys('\n'.join(map(str, files)))  # the page is drawn by its scripts, after it loads
    WebDriverWait(driver, WAIT).until(
        lambda d: all(f.stem in d.find_element(By.ID, box).text for f in files))  # listed as stem, suffix, size


def test_images(server, browser, validation, tmp_path):
    "A demo image and the validation image the model is least sure of: scores, Grad-CAM, the flag on the second only."
    predictor = MESPredictor.from_pretrained(demo_model(), device='cpu')
    record = fit_second_opinion(predictor, validation, target=0.9)  # as the app computes it from --calib-data
    probs = predictor.mes_probs(list(validation.path))
    unsure = Path(validation.path.iloc[int(probs.max(1).argmin())])
    confident = demo_examples()[0][3]  # demo_mes3.png
    expected = predictor.predict([str(confident), str(unsure)])
    p_top = expected.filter(like='p_mes').max(axis=1).to_numpy()
    assert p_top[0] >= record['threshold'] > p_top[1], (p_top, record)
    browser.get(server)
    _upload(browser, 'image-input', [confident, unsure])
    browser.find_element(By.ID, 'score-images').click()
    cards = WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#image-results .mes-card'))
    assert [c.get_attribute('data-image') for c in cards] == [confident.name, unsure.name]
    for card, mes in zip(cards, expected.mes):
        assert card.find_element(By.CLASS_NAME, 'mes-value').text == str(mes)
        img = card.find_element(By.CSS_SELECTOR, 'img.gradcam')
        assert img.get_attribute('src').startswith('data:image/png;base64,')
        assert browser.execute_script('return arguments[0].naturalWidth', img) == 256  # decoded and shown
    flags = [c.find_elements(By.CLASS_NAME, 'second-opinion') for c in cards]
    assert [len(f) for f in flags] == [0, 1] and 'Second opinion advised' in flags[1][0].text
    assert f"below {record['threshold']:.2f}" in browser.find_element(By.TAG_NAME, 'body').text
    browser.save_screenshot(str(tmp_path/'app_images.png'))


def test_video(server, browser, tmp_path):
    "The example video: the page's Mayo score is the video's truth, with its timeline, segments and three files."
    video = demo_examples()[1]
    truth = json.loads(video.with_name('demo_video_truth.json').read_text())
    browser.get(server)
    WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.XPATH, "//button[@role='tab'][contains(., 'Video')]"))[0].click()
    _upload(browser, 'video-input', [video])
    browser.find_element(By.ID, 'score-video').click()
    score = WebDriverWait(browser, WAIT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, '#video-score .mes-value'))[0]
    assert score.text == str(truth['mes'])
    WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#timeline img'))
    cells = browser.find_element(By.ID, 'segments').text.split('\n')  # label, column names, cells row by row
    start = cells.index(SEGMENTS_SHOWN[-1]) + 1
    assert cells[start - len(SEGMENTS_SHOWN):start] == SEGMENTS_SHOWN, cells
    mes = cells[start + SEGMENTS_SHOWN.index('mes')::len(SEGMENTS_SHOWN)]
    assert mes == [str(s['mes']) for s in truth['segments']], cells
    files = browser.find_element(By.ID, 'video-files').text
    assert all(name in files for name in ('summary\n.json', 'segments\n.csv', 'frames\n.csv')), files
    shot = tmp_path/'app_video.png'
    browser.save_screenshot(str(shot))
    if dest := os.environ.get('MES_MTL_APP_SCREENSHOT'):
        img = Image.open(shot)
        img = img.convert('RGB').resize((img.width // 2, img.height // 2), Image.LANCZOS)
        img.quantize(64).save(dest, optimize=True)  # a small PNG
