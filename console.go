package main

import "net/http"

// consoleHandler serves the console page at /.
func consoleHandler() http.Handler {
	return http.NotFoundHandler()
}
