"""Built-in scenarios shipped with loadkit."""
