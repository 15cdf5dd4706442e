"""Contracts between Mailsluice processes: every record that crosses a process boundary, and the
topics that carry them. One module per record family, each with a versioned encoder and decoder;
readers accept the versions they know and refuse newer ones (the record stays on its topic for a
newer reader). Processes never import each other, only these shapes.
"""
