"""The Textual app (no torch): app, screens/, widgets/, messages. Talks to children through host/."""
