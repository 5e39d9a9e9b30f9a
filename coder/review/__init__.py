"""`coder review`: a local browser page where coders accept, reject and add codes note by note.

decisions (the reviewer's file, written after every change; the gold codes it gives), notes (notes and
predictions read one note at a time), search (assignable codes found as the reviewer types), server (the
app and its guard: a token, 127.0.0.1, a strict Content-Security-Policy), page/ (the HTML, script and style).
"""
