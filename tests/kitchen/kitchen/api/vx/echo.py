raise SystemExit('vx is not a version folder and must never be imported')
