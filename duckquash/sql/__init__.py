"""SQL text: quoting (the one helper every identifier and literal goes through), internal names,
shared builders and dialect rendering. Nothing in this layer runs a query."""
