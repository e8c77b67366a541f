"""No tool syntax at all: everything the model writes is content."""
from ..family import Family

PASSTHROUGH = Family("passthrough", "ToolsCallProcessorPassthrough", ("passthrough",), passthrough=True)
