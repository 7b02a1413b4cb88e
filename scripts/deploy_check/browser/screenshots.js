// Screenshots of the Airflow UI in Debian's chromium, driven by playwright-core (no download),
// and a Leap connection added through the form as a user would.
// node screenshots.js <airflow url> <output folder> <dag id> <JSON list of form labels>
//   <JSON {"id", "host", "key"} of the connection to add>
// Exits 1, naming the problem, if a page shows an error (an error text or alert, a script
// error, an error answer from Airflow behind it), a label of the form is missing or the
// connection is not created.
'use strict';
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

// Debian's chromium as root in a closed network: no sandbox, no GPU, no background traffic.
const FLAGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const ERROR_TEXT = /something went wrong|not found|an error occurred|unexpected error/i;

async function shownErrors(page) {
  const found = [];
  for (const alert of await page.locator('[role="alert"]').all()) {
    if (await alert.isVisible()) found.push((await alert.innerText()).trim());
  }
  const body = await page.locator('body').innerText();
  const match = body.match(ERROR_TEXT);
  if (match) found.push(match[0]);
  return found.filter(Boolean);
}

async function main() {
  const [url, out, dagId, labelsJson, addJson] = process.argv.slice(2);
  const labels = JSON.parse(labelsJson);
  const add = JSON.parse(addJson);
  fs.mkdirSync(out, { recursive: true });
  const problems = [];
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: FLAGS, // playwright gives chromium a fresh, empty profile of its own
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    page.setDefaultTimeout(20000);
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    // A healthy page gets no error answer from Airflow; an error page starts with one.
    page.on('response', (r) => {
      if (r.status() >= 400 && r.url().startsWith(url)) problems.push(`HTTP ${r.status()} ${r.url()}`);
    });
    const shot = async (name, what) => {
      for (const error of await shownErrors(page)) problems.push(`${what}: shows "${error}"`);
      await page.screenshot({ path: path.join(out, name) });
    };

    // The Leap connection form: Admin > Connections > Add Connection, type Leap.
    await page.goto(`${url}/connections`, { waitUntil: 'networkidle' });
    await page.getByRole('button', { name: 'Add Connection' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByRole('combobox').fill('Leap');
    await page.keyboard.press('Enter');
    const missing = [];
    const expect = async (label) => {
      try {
        await dialog.getByText(label, { exact: true }).first().waitFor({ timeout: 5000 });
      } catch {
        missing.push(label);
      }
    };
    await expect('Base URL');
    await expect('API key');
    await shot('leap-connection-form.png', 'connection form');
    await dialog.getByText('Extra Fields', { exact: true }).click();
    for (const label of labels.filter((l) => !['Base URL', 'API key'].includes(l))) {
      await expect(label);
    }
    await page.setViewportSize({ width: 1400, height: 1600 });
    await shot('leap-connection-form-extras.png', 'connection form extras');
    if (missing.length) problems.push(`connection form lacks: ${missing.join(', ')}`);

    // A user adds a connection: id, type Leap, Base URL and API key typed, nothing else
    // touched, Save. What Airflow stores is read back by the Python check.
    await page.goto(`${url}/connections`, { waitUntil: 'networkidle' });
    await page.getByRole('button', { name: 'Add Connection' }).click();
    await dialog.getByLabel('Connection ID').fill(add.id);
    await dialog.getByRole('combobox').fill('Leap');
    await page.keyboard.press('Enter');
    await dialog.getByLabel('Base URL').fill(add.host);
    await dialog.getByLabel('API key').fill(add.key);
    const created = page.waitForResponse(
      (r) => r.request().method() === 'POST' && new URL(r.url()).pathname === '/api/v2/connections',
    );
    await dialog.getByRole('button', { name: 'Save' }).click();
    const answer = await created;
    if (answer.status() !== 201) problems.push(`saving ${add.id}: HTTP ${answer.status()}`);
    await dialog.waitFor({ state: 'hidden' });
    await shot('leap-connection-saved.png', 'connections after save');

    // The DAG's grid after its runs.
    await page.setViewportSize({ width: 1600, height: 1000 });
    await page.goto(`${url}/dags/${dagId}`, { waitUntil: 'networkidle' });
    await page.getByText(dagId).first().waitFor();
    await page.waitForTimeout(1500); // the grid draws after its data arrives
    await shot(`${dagId}-grid.png`, 'grid');
  } finally {
    await browser.close();
  }
  if (problems.length) {
    console.error(problems.join('\n'));
    process.exit(1);
  }
  console.log(`4 screenshots in ${out}, no error shown; ${add.id} saved from the form`);
}

main().catch((e) => {
  console.error(`screenshots failed: ${e.message.split('\n')[0]}`);
  process.exit(1);
});
