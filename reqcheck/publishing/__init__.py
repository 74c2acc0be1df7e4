"""Publishing an adapter: the package and its layout (`packaging`), the model card (`card`), the
personal-data scan before a public upload (`personal_data`) and the Hub push (`hub`)."""
