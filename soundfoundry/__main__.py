from soundfoundry.cli import app

app(prog_name="soundfoundry")
