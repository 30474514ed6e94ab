raise SystemExit('not-a-module.py must never be imported')
