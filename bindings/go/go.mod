module github.com/subspec/subspec/bindings/go

go 1.19
