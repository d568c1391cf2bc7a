from rakuten_mlops.cli import app

app(prog_name="rakuten-mlops")
