import pytest

from se_transfer.registry import Registry, RegistryError


def test_registry_rejects_duplicates_and_suggests_close_matches():
    reg = Registry("widget")

    @reg.register()
    def se_resnet50():
        return 1

    reg.add("resnet50", object())
    assert reg.get("se_resnet50") is se_resnet50
    assert reg.names() == ["resnet50", "se_resnet50"] and len(reg) == 2 and "resnet50" in reg
    with pytest.raises(RegistryError, match="already registered"):
        reg.add("resnet50", object())
    with pytest.raises(KeyError) as err:
        reg.get("se_resnet05")
    assert "Did you mean: se_resnet50" in str(err.value)
    with pytest.raises(KeyError, match="Known widgets: resnet50, se_resnet50"):
        reg.get("vgg16")
